"""One settings model for every entry point (CLI, worker, dev stack).

Precedence, highest first: command-line flag > environment (`LABRADOR_*`) > config file
(`--config`, `LABRADOR_CONFIG` or `~/.config/labrador/config.yaml`) > a running `labrador dev`
stack (its state file) > defaults. Values a workflow depends on are copied into its input at start;
workflows never read settings.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
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
    return _dev_state_file(dict(os.environ))


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
    kube_config: Path | None = Field(None, description="kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    kube_nodeport_range: str = Field("30000-32767", description="the API server's --service-node-port-range")
    kube_clone_stall_timeout: float = Field(600.0, description="seconds without PVC-clone progress before a retry")
    kube_clone_restart_limit: int = Field(3, description="clone pod restarts tolerated before a retry")
    kube_clone_max_attempts: int = Field(3, description="PVC-clone attempts before the node fails")
    kube_clone_backoff: float = Field(30.0, description="seconds before the first clone retry (doubles each time)")
    sim_boot_seconds: float = Field(0.0, ge=0.0, description="simulated backend: seconds until a new node is ready")
    sim_faults_file: Path | None = Field(None, description="simulated backend: YAML fault plan (docs/simulated.md)")
    sim_scenario_file: Path | None = Field(
        None, description="simulated backend: YAML SSH scenario answered by every node (docs/simulated.md)"
    )
    sim_ssh_idle_seconds: float | None = Field(
        None, ge=0.0, description="simulated backend: close node SSH listeners idle this long (None: never)"
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
    max_vms: int = Field(200, description="global cap on lab VMs")
    max_memory: str = Field("512Gi", description="global cap on lab VM memory")

    # Session time rules (copied into each session's input at start)
    session_unclaimed_timeout: str = Field("10m", description="a ready lab whose credentials nobody fetched ends")
    session_provisioning_overdue: str = Field("15m", description="a lab not ready within this fails (overdue)")
    session_health_interval: str = Field("30s", description="how often a running lab's nodes are checked")
    session_health_grace: str = Field("2m", description="how long a node may stay not-ready before the lab fails")
    session_extend_window: str = Field("15m", description="extend is allowed only in the lab's last part")
    session_check_min_interval: str = Field("10s", description="at most one student check per lab per interval")

    @field_validator("*")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        # `~/.ssh/key` from an environment variable or a config file means the user's home.
        return value.expanduser() if isinstance(value, Path) else value

    @field_validator(
        "max_lab_duration", "session_unclaimed_timeout", "session_provisioning_overdue", "session_health_interval",
        "session_health_grace", "session_extend_window", "session_check_min_interval",
    )
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
        raise SettingsError(f"config file {path}: {' '.join(str(exc).split())}") from exc
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


def running_dev_stack(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings published by a running `labrador dev` (address, data dir), if its process lives."""
    path = dev_state_file() if environ is None else _dev_state_file(environ)
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
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
        take(running_dev_stack(environ), "the running dev stack")
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
