"""Loading the settings (the model is `cluster.settings.Settings`, below every layer that reads it).

Precedence, highest first: command-line flag > environment (`LABRADOR_*`) > config file
(`--config`, `LABRADOR_CONFIG` or `~/.config/labrador/config.yaml`) > a running `labrador dev`
stack (its state file) > defaults.
"""

from __future__ import annotations

import difflib
import json
import os
import time
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from cluster.settings import PACKAGE_LABS_DIR, Settings, default_data_dir
from labs.models import parse_duration, quantity_bytes

__all__ = [
    "DEFAULT_CONFIG_FILE", "ENV_PREFIX", "PACKAGE_LABS_DIR", "DevStackNotReady", "Settings", "SettingsError",
    "catalog_limits", "default_data_dir", "dev_state_file", "load_settings", "running_dev_stack",
]
CONFIG_FILE_MAX_BYTES = 64 * 1024

ENV_PREFIX = "LABRADOR_"
DEFAULT_CONFIG_FILE = Path("~/.config/labrador/config.yaml")


def dev_state_file() -> Path:
    return _dev_state_file(dict(os.environ))


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = environ[key]
    return values


def catalog_limits(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `labs.loader.load_catalog` that hold the platform's limits."""
    return {
        "max_duration": parse_duration(settings.max_lab_duration),
        "max_vms": settings.max_vms,
        "max_memory_bytes": quantity_bytes(settings.max_memory),
    }


def _file_values(path: Path) -> dict[str, Any]:
    from labs.safe_yaml import YamlRefused, safe_load

    try:
        with path.open("rb") as handle:
            raw = handle.read(CONFIG_FILE_MAX_BYTES + 1)
        if len(raw) > CONFIG_FILE_MAX_BYTES:
            raise SettingsError(f"config file {path}: larger than {CONFIG_FILE_MAX_BYTES // 1024} KiB")
        data = safe_load(raw.decode("utf-8")) or {}
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path}: not UTF-8 text (a YAML mapping of settings)") from None
    except (yaml.YAMLError, YamlRefused) as exc:
        raise SettingsError(f"config file {path}: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    # A relative path in a config file means relative to that file, not to wherever the command runs.
    for name, value in values.items():
        field = Settings.model_fields.get(name)
        if field is not None and _is_path(field.annotation) and isinstance(value, str):
            expanded = Path(value).expanduser()
            values[name] = expanded if expanded.is_absolute() else (path.parent / expanded).resolve()
    return values


def _is_path(annotation: Any) -> bool:
    return annotation is Path or Path in typing.get_args(annotation)


DEV_STACK_READY_WAIT = 60.0
"""How long a command waits for a `labrador dev` that is still starting (its server's own start limit)."""


class DevStackNotReady(Exception):
    """A `labrador dev` is starting and did not become ready in time (CLI exit 3)."""


def _dev_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if isinstance(state, dict) else None


def running_dev_stack(environ: dict[str, str] | None = None, *, wait: float = 0.0) -> dict[str, Any]:
    """Settings published by a running `labrador dev` (address, data dir, codec key file), if its process
    lives. A stack that is still starting (state "ready": false: its server may already answer, without
    its key published yet) is waited for up to `wait` seconds, then DevStackNotReady."""
    path = dev_state_file() if environ is None else _dev_state_file(environ)
    deadline = time.monotonic() + wait
    while True:
        state = _dev_state(path)
        if state is None:
            return {}
        if state.get("ready", True):
            break
        if time.monotonic() >= deadline:
            raise DevStackNotReady(
                f"labrador dev (pid {state.get('pid')}) is still starting; run the command again once it "
                "prints its ready line"
            )
        time.sleep(0.25)
    published = state.get("settings", {})
    # Only what this version knows: an older or newer dev stack must not make every command fail.
    return {k: v for k, v in published.items() if k in Settings.model_fields} if isinstance(published, dict) else {}


def _dev_state_file(environ: dict[str, str]) -> Path:
    return Path(environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser() / "labrador" / "dev.json"


class SettingsError(ValueError):
    pass


_SECRET_HINTS = ("key", "secret", "token", "password")


def load_settings(
    flags: dict[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    use_dev_stack: bool = True,
) -> Settings:
    """Merge the sources (flag > environment > config file > running dev stack > defaults).

    A bad value raises SettingsError with one line naming the setting and where it came from; the
    value itself is shown only for settings that cannot hold a credential.
    """
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def take(values: dict[str, Any], source: str) -> None:
        merged.update(values)
        sources.update(dict.fromkeys(values, source))

    if use_dev_stack:
        take(running_dev_stack(environ, wait=DEV_STACK_READY_WAIT), "the running dev stack")
    config_path = config_file or (Path(environ[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in environ else None)
    default_config = Path(environ.get("HOME", "~")).expanduser() / ".config" / "labrador" / "config.yaml"
    if config_path is None and default_config.is_file():
        config_path = default_config
    if config_path is not None:
        take(_file_values(config_path.expanduser()), f"config file {config_path}")
    for name, value in _env_values(environ).items():
        take({name: value}, ENV_PREFIX + name.upper())
    for name, value in (flags or {}).items():
        if value is not None:
            take({name: value}, "--" + name.replace("_", "-"))
    try:
        return Settings(**merged)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        where = f" (from {sources[name]})" if sources.get(name) else ""
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, list(Settings.model_fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(f"unknown setting {name!r}{where}{hint}") from None
        message = str(err["msg"]).removeprefix("Value error, ")
        secret = any(hint in name for hint in _SECRET_HINTS) or SecretStr in typing.get_args(
            Settings.model_fields[name].annotation
        )
        value = err.get("input")
        shown = "" if secret or repr(value) in message else f" (got {value!r})"
        raise SettingsError(f"setting {name}{where}: {message}{shown}") from None
