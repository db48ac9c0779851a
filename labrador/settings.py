"""One settings model for every entry point (CLI, worker, dev stack).

Precedence, highest first: command-line flag > environment (`LABRADOR_*`) > config file
(`--config`, `LABRADOR_CONFIG` or `~/.config/labrador/config.yaml`) > a running `labrador dev`
stack (its state file) > defaults. Values a workflow depends on are copied into its input at start;
workflows never read settings.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import time
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from labs.models import MIN_MEMORY, parse_duration, quantity_bytes

ENV_PREFIX = "LABRADOR_"
DEFAULT_CONFIG_FILE = Path("~/.config/labrador/config.yaml")
PACKAGE_LABS_DIR = Path(__file__).resolve().parent.parent / "labs"


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "labrador"


def dev_state_file() -> Path:
    return _dev_state_file(dict(os.environ))


CONFIG_FILE_MAX_BYTES = 64 * 1024
MAX_VMS_LIMIT = 100_000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


def _host_port(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST_RE.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not {what} host:port (port 1-65535)")
    return value


def port_range(value: str) -> tuple[int, int]:
    """'30000-32767' -> (30000, 32767); both ends 1-65535, low <= high."""
    low, sep, high = value.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 65535):
        raise ValueError(f"{value!r} is not a port range like '30000-32767' (ports 1-65535, low first)")
    return int(low), int(high)


class Settings(BaseModel):
    # Every value is checked here, before anything starts: a bad one is a SettingsError (exit 1).
    # No NaN or infinity in any float (`--timeout nan` would compare false against every limit).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Temporal
    temporal_address: str = Field("127.0.0.1:7233", description="Temporal frontend host:port")
    temporal_namespace: str = Field("default", description="Temporal namespace")
    task_queue: str = Field("labrador", description="task queue of the worker")
    temporal_tls: bool = Field(False, description="use TLS to reach Temporal")
    temporal_tls_cert: Path | None = Field(None, description="client certificate (mTLS)")
    temporal_tls_key: Path | None = Field(None, description="client private key (mTLS)")
    temporal_tls_ca: Path | None = Field(None, description="CA bundle for the server certificate")
    temporal_api_key: SecretStr | None = Field(None, description="API key (Temporal Cloud)")

    # Cluster
    cluster_backend: Literal["simulated", "kubevirt"] = Field("simulated", description="cluster backend")
    data_dir: Path = Field(default_factory=default_data_dir, description="simulated cluster state, published images")
    catalog_dir: Path = Field(PACKAGE_LABS_DIR, description="directory of lab YAML files and node-classes.yaml")
    kube_namespace: str = Field("labrador", description="namespace of the worker (kubevirt backend)")
    external_host: str = Field("127.0.0.1", description="host students use to reach exposed SSH")
    ssh_private_key: Path | None = Field(None, description="platform SSH key the orchestrator logs in with")
    kube_config: Path | None = Field(None, description="kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    kube_nodeport_range: str = Field("30000-32767", description="the API server's --service-node-port-range")
    kube_clone_stall_timeout: float = Field(
        600.0, gt=0.0, description="seconds without PVC-clone progress before a retry")
    kube_clone_restart_limit: int = Field(3, ge=0, description="clone pod restarts tolerated before a retry")
    kube_clone_max_attempts: int = Field(
        3, ge=1, le=100, description="PVC-clone attempts before the node fails")
    kube_clone_backoff: float = Field(
        30.0, ge=0.0, description="seconds before the first clone retry (doubles each time)")
    sim_boot_seconds: float = Field(0.0, ge=0.0, description="simulated backend: seconds until a new node is ready")
    sim_faults_file: Path | None = Field(None, description="simulated backend: YAML fault plan (docs/simulated.md)")
    sim_scenario_file: Path | None = Field(
        None, description="simulated backend: YAML SSH scenario answered by every node (docs/simulated.md)"
    )
    sim_ssh_idle_seconds: float | None = Field(
        None, gt=0.0, description="simulated backend: close node SSH listeners idle this long (None: never)"
    )

    # Images
    registry: str = Field("127.0.0.1:5000", description="registry for containerDisk images")
    registry_insecure: bool = Field(False, description="plain HTTP to the registry (loopback registries)")
    image_repository: str = Field("labrador/node-images", description="repository of the containerDisk images")
    image_builder: Literal["daemonless", "docker"] = Field("daemonless", description="containerDisk builder")
    registry_auth: Literal["auto", "docker-config", "ecr", "none"] = Field(
        "auto", description="registry credentials: ECR for ECR hosts (auto), else a docker config.json")
    docker_config: Path | None = Field(None, description="docker config.json with registry credentials")
    docker_host: str | None = Field(None, description="docker daemon for the docker builder (DOCKER_HOST)")
    aws_endpoint_url: str | None = Field(None, description="S3/ECR endpoint override (S3-compatible stores)")
    image_archive_bucket: str | None = Field(None, description="S3 bucket to archive raw exports in (optional)")
    image_work_dir: Path | None = Field(None, description="scratch space for disks (default: data_dir/image-work)")
    export_api_version: Literal["v1beta1", "v1"] = Field(
        "v1", description="export.kubevirt.io version: v1beta1 before KubeVirt 1.9, v1 from 1.9")
    image_rebuild_schedule: str = Field("0 3 * * 0", description="default cron of image rebuilds (weekly)")

    # Payload encryption
    codec_keys: SecretStr | None = Field(
        None, description="AES-GCM keys 'id:base64key[,id:base64key]'; the first encrypts"
    )
    codec_keys_file: Path | None = Field(None, description="file holding codec_keys (a mounted Secret)")

    # Limits
    max_lab_duration: str = Field("4h", description="longest duration a lab file may ask for")
    max_vms: int = Field(200, ge=1, le=MAX_VMS_LIMIT, description="global cap on lab VMs")
    max_memory: str = Field("512Gi", description="global cap on lab VM memory")

    # Session time rules (copied into each session's input at start)
    session_unclaimed_timeout: str = Field("10m", description="a ready lab whose credentials nobody fetched ends")
    session_provisioning_overdue: str = Field("15m", description="a lab not ready within this fails (overdue)")
    session_health_interval: str = Field("30s", description="how often a running lab's nodes are checked")
    session_health_grace: str = Field("2m", description="how long a node may stay not-ready before the lab fails")

    @field_validator("*")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        # `~/.ssh/key` from an environment variable or a config file means the user's home.
        return value.expanduser() if isinstance(value, Path) else value

    @field_validator(
        "max_lab_duration", "session_unclaimed_timeout", "session_provisioning_overdue", "session_health_interval",
        "session_health_grace",
    )
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parsed = parse_duration(value)
        if not isinstance(parsed, timedelta):
            raise ValueError(f"{value!r} is not a duration like '1h', '90m' or '1h30m'")
        if parsed <= timedelta(0):
            raise ValueError(f"{value!r} must be longer than zero")
        if parsed > timedelta(days=30):
            raise ValueError(f"{value!r} is longer than 30 days")
        return value

    @field_validator("max_memory")
    @classmethod
    def _is_memory(cls, value: str) -> str:
        try:
            size = quantity_bytes(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a Kubernetes quantity like 512Gi") from None
        if size < quantity_bytes(MIN_MEMORY):
            raise ValueError(f"{value!r} is less than one node ({MIN_MEMORY})")
        return value

    @field_validator("temporal_address")
    @classmethod
    def _is_address(cls, value: str) -> str:
        return _host_port(value, "a Temporal address")

    @field_validator("registry")
    @classmethod
    def _is_registry(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if sep and port.isdigit():
            return _host_port(value, "a registry")
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a registry host[:port]")
        return value

    @field_validator("external_host")
    @classmethod
    def _is_host(cls, value: str) -> str:
        if not _HOST_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or address")
        return value

    @field_validator("temporal_namespace", "task_queue")
    @classmethod
    def _is_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a name (letters, digits and . _ / -, no spaces)")
        return value

    @field_validator("kube_namespace")
    @classmethod
    def _is_namespace(cls, value: str) -> str:
        if not _DNS_LABEL_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (DNS-1123 label)")
        return value

    @field_validator("image_repository")
    @classmethod
    def _is_repository(cls, value: str) -> str:
        if not _REPOSITORY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a repository path like labrador/node-images")
        return value

    @field_validator("kube_nodeport_range")
    @classmethod
    def _is_port_range(cls, value: str) -> str:
        port_range(value)
        return value

    @field_validator("image_rebuild_schedule")
    @classmethod
    def _is_cron(cls, value: str) -> str:
        if not (value.startswith("@") or len(value.split()) == 5):
            raise ValueError(f"{value!r} is not a cron expression (five fields, or @daily/@weekly)")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL byte")
        if isinstance(value, str) and ("\n" in value or "\r" in value) and info.field_name != "codec_keys":
            raise ValueError("contains a line break")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return value


def catalog_limits(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `labs.loader.load_catalog` that hold the platform's limits."""
    max_duration = parse_duration(settings.max_lab_duration)
    return {
        "max_duration": max_duration,
        "max_vms": settings.max_vms,
        "max_memory_bytes": quantity_bytes(settings.max_memory),
    }


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = environ[key]
    return values


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
