"""One settings model for every entry point (CLI, worker, dev stack).

Precedence, highest first: command-line flag > environment (`LABRADOR_*`) > config file
(`--config`, `LABRADOR_CONFIG` or `~/.config/labrador/config.yaml`) > a running `labrador dev`
stack (its state file) > defaults. Values a workflow depends on are copied into its input at start;
workflows never read settings.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from labs.models import parse_duration

ENV_PREFIX = "LABRADOR_"
DEFAULT_CONFIG_FILE = Path("~/.config/labrador/config.yaml")
PACKAGE_LABS_DIR = Path(__file__).resolve().parent.parent / "labs"


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "labrador"


def dev_state_file() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser() / "labrador" / "dev.json"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    sim_boot_seconds: float = Field(0.0, ge=0.0, description="simulated backend: seconds until a new node is ready")
    sim_faults_file: Path | None = Field(None, description="simulated backend: YAML fault plan (docs/simulated.md)")
    sim_scenario_file: Path | None = Field(
        None, description="simulated backend: YAML SSH scenario answered by every node (docs/simulated.md)"
    )

    # Images
    registry: str = Field("127.0.0.1:5000", description="registry for containerDisk images")
    registry_insecure: bool = Field(False, description="plain HTTP to the registry (loopback registries)")

    # Payload encryption
    codec_keys: SecretStr | None = Field(
        None, description="AES-GCM keys 'id:base64key[,id:base64key]'; the first encrypts"
    )
    codec_keys_file: Path | None = Field(None, description="file holding codec_keys (a mounted Secret)")

    # Limits
    max_lab_duration: str = Field("4h", description="longest duration a lab file may ask for")
    max_vms: int = Field(200, description="global cap on lab VMs")
    max_memory: str = Field("512Gi", description="global cap on lab VM memory")

    @field_validator("max_lab_duration")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        if not isinstance(parse_duration(value), timedelta):
            raise ValueError(f"{value!r} is not a duration like '1h', '90m' or '1h30m'")
        return value


def _env_values(environ: dict[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = environ[key]
    return values


def _file_values(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def running_dev_stack() -> dict[str, Any]:
    """Settings published by a running `labrador dev` (address, data dir), if its process lives."""
    path = dev_state_file()
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return dict(state.get("settings", {}))


class SettingsError(ValueError):
    pass


def load_settings(
    flags: dict[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
    use_dev_stack: bool = True,
) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    if use_dev_stack:
        merged.update(running_dev_stack())
    config_path = config_file or (Path(environ[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in environ else None)
    if config_path is None and DEFAULT_CONFIG_FILE.expanduser().is_file():
        config_path = DEFAULT_CONFIG_FILE.expanduser()
    if config_path is not None:
        merged.update(_file_values(config_path))
    merged.update(_env_values(environ))
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"setting {field}: {err['msg']} (got {err.get('input')!r})") from None
