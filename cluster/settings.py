"""One settings model for every entry point (CLI, worker, dev stack): the model only, no loading.

It lives here, below every layer that reads it (cluster backends, SSH runner, image pipeline,
activities), so none of them imports the shell. Loading it (flags, environment, config file, a
running dev stack) is the shell's job: `labrador/settings.py`. Values a workflow depends on are
copied into its input at start; workflows never read settings (import contract in pyproject.toml).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from cluster.naming import is_dns_label
from labs.models import MIN_MEMORY, parse_duration, quantity_bytes

PACKAGE_LABS_DIR = Path(__file__).resolve().parent.parent / "labs"


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "labrador"


MAX_VMS_LIMIT = 100_000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


# No dots in a deployment name: the CLI addresses a version as "<deployment>.<build ID>".
_DEPLOYMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_BUILD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _matching(value: str, pattern: re.Pattern[str], refusal: str) -> str:
    """`value` when the whole of it matches `pattern`, else ValueError "'value' <refusal>"."""
    if not pattern.fullmatch(value):
        raise ValueError(f"{value!r} {refusal}")
    return value


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
    # The worker process (worker.py)
    worker_deployment_name: str | None = Field(
        None, description="Worker Deployment name (Worker Versioning); unset: unversioned worker"
    )
    worker_build_id: str | None = Field(
        None, description="this worker's build ID in the Worker Deployment (required with worker_deployment_name)"
    )
    worker_graceful_shutdown: str = Field(
        "10m", description="on SIGTERM, how long running activities (setup scripts) get to finish"
    )
    worker_max_cached_workflows: int = Field(
        1000, ge=0, le=100_000, description="workflow runs a worker keeps in memory (~0.1 MiB per lab)"
    )

    # Cluster
    cluster_backend: Literal["simulated", "kubevirt"] = Field("simulated", description="cluster backend")
    data_dir: Path = Field(default_factory=default_data_dir, description="simulated cluster state, published images")
    catalog_dir: Path = Field(PACKAGE_LABS_DIR, description="directory of lab YAML files and node-classes.yaml")
    kube_namespace: str = Field("labrador", description="namespace of the worker (kubevirt backend)")
    external_host: str = Field("127.0.0.1", description="host students use to reach exposed SSH")
    ssh_private_key: Path | None = Field(None, description="platform SSH key the orchestrator logs in with")
    kube_config: Path | None = Field(None, description="kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    kube_nodeport_range: str = Field("30000-32767", description="the API server's --service-node-port-range")
    image_source_namespaces: list[str] = Field(
        ["labrador-golden"], description="namespaces of image sources (exports, golden PVCs, builder VMs: the first)")
    lab_dns: Literal["cluster", "none"] = Field("cluster", description="lab VMs may query kube-dns (cluster) or no DNS")
    ssh_source_ranges: list[str] = Field(
        [], description="CIDRs allowed to reach lab SSH (empty: anyone); needs source IPs preserved")
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
    session_extend_window: str = Field("15m", description="extend is allowed only in the lab's last part")
    session_check_min_interval: str = Field("10s", description="at most one student check per lab per interval")
    # Pause and reset limits (a lab file's `pause:` / `reset:` sections override them per lab)
    session_pause_longest: str = Field("30m", description="longest single pause; past it the lab ends (pause expired)")
    session_pause_total: str = Field("2h", description="total paused time allowed per lab")
    session_pause_max: int = Field(3, ge=0, description="pauses allowed per lab (0: pausing is off)")
    session_pause_expired_graded: bool = Field(False, description="grade a lab that ends because a pause expired")
    session_reset_max: int = Field(1, ge=0, description="resets (fresh nodes) allowed per lab (0: off)")
    session_reset_restarts_time: bool = Field(
        False, description="a reset gives the lab's full duration again (else the time left is kept)"
    )

    # HTTP API (labrador/api, docs/api.md)
    api_address: str = Field("127.0.0.1:8088", description="host:port the HTTP API listens on")
    api_keys: SecretStr | None = Field(
        None, description="API bearer keys 'scope:key[,scope:key]', scopes app and admin (several per scope)"
    )
    api_keys_file: Path | None = Field(None, description="file holding api_keys (a mounted Secret)")
    api_rate_limit: int = Field(120, ge=1, description="requests per minute per API key (then 429)")
    api_max_body_bytes: int = Field(65536, ge=1024, description="largest request body the API accepts")
    published_images_dir: Path | None = Field(
        None, description="read published images from this mounted ConfigMap directory (the API: no Kubernetes access)"
    )

    # Observability and events (docs/api.md)
    metrics_address: str | None = Field(None, description="host:port of the worker's Prometheus /metrics")
    webhook_urls: str = Field("", description="comma-separated URLs that receive the lab event webhooks")
    webhook_secret: SecretStr | None = Field(None, description="Standard Webhooks signing secret 'whsec_...'")
    webhook_expiring_before: str = Field("5m", description="lab.expiring is sent this long before the deadline")
    webhook_max_attempts: int = Field(
        12, ge=1, le=50, description="delivery attempts per URL (backoff from 1s doubling to 10m) before dead-letter"
    )

    @field_validator("*")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        # `~/.ssh/key` from an environment variable or a config file means the user's home.
        return value.expanduser() if isinstance(value, Path) else value

    @field_validator("image_source_namespaces", "ssh_source_ranges", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # From an environment variable or a flag: "a,b".
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("image_source_namespaces")
    @classmethod
    def _source_namespaces(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one namespace (golden-image builder VMs run in the first)")
        for name in value:
            if not is_dns_label(name) or name.startswith(("kube-", "lab-")) or name == "default":
                raise ValueError(f"{name!r} is not a namespace labrador may use for image sources "
                                 "(a DNS label, not default, kube-* or lab-*)")
        return value

    @field_validator("ssh_source_ranges")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR like 203.0.113.0/24") from None
        return value

    @field_validator(
        "max_lab_duration", "session_unclaimed_timeout", "session_provisioning_overdue", "session_health_interval",
        "session_health_grace", "session_pause_longest", "session_pause_total", "webhook_expiring_before",
        "session_extend_window", "session_check_min_interval", "worker_graceful_shutdown",
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

    @field_validator("worker_deployment_name")
    @classmethod
    def _is_deployment_name(cls, value: str | None) -> str | None:
        return None if value is None else _matching(
            value, _DEPLOYMENT_RE, "is not a deployment name like 'labrador' (letters, digits, - and _)")

    @field_validator("worker_build_id")
    @classmethod
    def _is_build_id(cls, value: str | None) -> str | None:
        return None if value is None else _matching(
            value, _BUILD_ID_RE, "is not a build ID like '1.4.0' or '2026-12-01-a1b2c3'")

    @model_validator(mode="after")
    def _versioning_is_complete(self) -> Settings:
        if (self.worker_deployment_name is None) != (self.worker_build_id is None):
            raise ValueError("worker_deployment_name and worker_build_id: set both (Worker Versioning) or neither")
        return self

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

    @field_validator("api_address")
    @classmethod
    def _is_api_address(cls, value: str) -> str:
        return _host_port(value, "an API listen address")

    @field_validator("metrics_address")
    @classmethod
    def _is_metrics_address(cls, value: str | None) -> str | None:
        return None if value is None else _host_port(value, "a metrics listen address")

    @field_validator("registry")
    @classmethod
    def _is_registry(cls, value: str) -> str:
        _, sep, port = value.rpartition(":")
        if sep and port.isdigit():
            return _host_port(value, "a registry")
        return _matching(value, _HOST_RE, "is not a registry host[:port]")

    @field_validator("external_host")
    @classmethod
    def _is_host(cls, value: str) -> str:
        return _matching(value, _HOST_RE, "is not a host name or address")

    @field_validator("temporal_namespace", "task_queue")
    @classmethod
    def _is_name(cls, value: str) -> str:
        return _matching(value, _NAME_RE, "is not a name (letters, digits and . _ / -, no spaces)")

    @field_validator("kube_namespace")
    @classmethod
    def _is_namespace(cls, value: str) -> str:
        if not is_dns_label(value):
            raise ValueError(f"{value!r} is not a Kubernetes namespace name (DNS-1123 label)")
        return value

    @field_validator("image_repository")
    @classmethod
    def _is_repository(cls, value: str) -> str:
        return _matching(value, _REPOSITORY_RE, "is not a repository path like labrador/node-images")

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
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("contains a NUL byte")
        multiline = info.field_name in ("codec_keys", "api_keys")  # key lists may be one per line
        if isinstance(value, str) and ("\n" in value or "\r" in value) and not multiline:
            raise ValueError("contains a line break")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _are_urls(cls, value: str) -> str:
        for position, url in enumerate(u.strip() for u in value.split(",")):
            if url and not (url.startswith(("http://", "https://")) and len(url) > len("https://")):
                raise ValueError(f"entry {position + 1} is not an http:// or https:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _is_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        body = text.removeprefix("whsec_")
        if body == text or not re.fullmatch(r"[A-Za-z0-9+/]{16,}={0,2}", body):
            raise ValueError("must be 'whsec_' followed by base64 (at least 12 bytes), e.g. from "
                             "`labrador webhooks new-secret`")
        return value
