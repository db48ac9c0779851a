"""One settings model for every entry point (CLI, worker, dev stack): the model only, no loading.

It lives here, below every layer that reads it (cluster backends, SSH runner, image pipeline,
activities), so none of them imports the shell. Loading it (flags, environment, config file, a
running dev stack) is the shell's job: `labrador/settings.py`. Values a workflow depends on are
copied into its input at start; workflows never read settings (import contract in pyproject.toml).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from labs.models import parse_duration

PACKAGE_LABS_DIR = Path(__file__).resolve().parent.parent / "labs"


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "labrador"


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

    # Observability and events (docs/api.md)
    metrics_address: str | None = Field(None, description="host:port of the worker's Prometheus /metrics")
    webhook_urls: str = Field("", description="comma-separated URLs that receive the lab event webhooks")
    webhook_secret: SecretStr | None = Field(None, description="Standard Webhooks signing secret 'whsec_...'")
    webhook_expiring_before: str = Field("5m", description="lab.expiring is sent this long before the deadline")

    @field_validator("*")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        # `~/.ssh/key` from an environment variable or a config file means the user's home.
        return value.expanduser() if isinstance(value, Path) else value

    @field_validator(
        "max_lab_duration", "session_unclaimed_timeout", "session_provisioning_overdue", "session_health_interval",
        "session_health_grace", "session_pause_longest", "session_pause_total", "webhook_expiring_before",
    )
    @classmethod
    def _is_duration(cls, value: str) -> str:
        if not isinstance(parse_duration(value), timedelta):
            raise ValueError(f"{value!r} is not a duration like '1h', '90m' or '1h30m'")
        return value
