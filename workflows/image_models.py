"""Inputs, outputs and activity contracts of the image build workflow.

Pure pydantic models: the workflow, the activities, the CLI and the schedules import them.
No credential ever appears here: the worker resolves registry credentials and export tokens itself.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labs.models import NodeClass


class Model(BaseModel):
    model_config = ConfigDict(frozen=True)


IMAGE_BUILD_WORKFLOW = "ImageBuildWorkflow"


class ImageActivityName(StrEnum):
    # on the shared task queue
    WORKER_QUEUE = "image_worker_queue"
    GOLDEN_START = "image_golden_start"
    GOLDEN_WAIT = "image_golden_wait"
    GOLDEN_DELETE = "image_golden_delete"
    EXPORT_DELETE = "image_export_delete"
    PUBLISH = "image_publish"
    # on the worker-specific queue returned by WORKER_QUEUE (the file-handling chain)
    EXPORT_PREPARE = "image_export_prepare"
    DOWNLOAD = "image_download"
    CONVERT = "image_convert"
    ARCHIVE = "image_archive"
    BUILD = "image_build"
    PUSH = "image_push"
    CLEANUP_FILES = "image_cleanup_files"


class SourceKind(StrEnum):
    DISK = "disk"  # a disk file on the worker (operators, tests)
    VM = "vm"  # a stopped VirtualMachine, exported
    PVC = "pvc"  # a PVC, exported
    GOLDEN = "golden"  # boot a builder VM from the class's build recipe, then export it


class ImageSource(Model):
    kind: SourceKind
    namespace: str | None = None
    name: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ImageSource:
        if self.kind == SourceKind.DISK and not self.path:
            raise ValueError("source: a disk source needs `path`")
        if self.kind in (SourceKind.VM, SourceKind.PVC) and not (self.namespace and self.name):
            raise ValueError(f"source: a {self.kind.value} source needs `namespace` and `name`")
        return self

    def describe(self) -> str:
        if self.kind == SourceKind.DISK:
            return f"disk {self.path}"
        if self.kind == SourceKind.GOLDEN:
            return "golden build"
        return f"{self.kind.value} {self.namespace}/{self.name}"


_REGISTRY_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                          r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
_REPOSITORY_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


class ImageBuildInput(Model):
    node_class: NodeClass
    source: ImageSource
    registry: str = Field(description="registry host[:port], no scheme, no path")
    repository: str = "labrador/node-images"
    builder: Literal["daemonless", "docker"] = "daemonless"
    insecure: bool = False
    export_api_version: Literal["v1beta1", "v1"] = "v1"
    archive_bucket: str | None = None
    publish: bool = True
    pinned_attempts: int = Field(3, ge=1, description="how many workers the file chain may move through")
    pinned_schedule_to_start: timedelta = Field(
        timedelta(minutes=2), description="how long a pinned step waits for its worker before it is declared gone")
    golden_timeout: timedelta = timedelta(hours=1)
    step_timeout: timedelta = timedelta(hours=2)


    @field_validator("registry")
    @classmethod
    def _registry_is_a_host(cls, value: str) -> str:
        if not _REGISTRY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a registry host[:port] (no scheme, no path)")
        return value

    @field_validator("repository")
    @classmethod
    def _repository_is_valid(cls, value: str) -> str:
        if not _REPOSITORY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a repository name (lowercase path like labrador/node-images)")
        return value


class ImageBuildStatus(Model):
    step: str
    worker_queue: str | None = None
    attempt: int = 0
    detail: str = ""


class ImageBuildResult(Model):
    node_class: str
    reference: str = Field(description="registry/repository@sha256:... (what nodes run)")
    tagged: str = Field(description="registry/repository:<class>-<k8s>-<yyyymmdd>")
    tag: str
    digest: str
    virtual_size: int
    disk_sha256: str | None = None
    layer_digest: str | None = None
    archive: str | None = None
    published: bool = False
    worker_queue: str


# --- activity contracts ---------------------------------------------------------------------------


class WorkerQueue(Model):
    queue: str


class WorkKey(Model):
    """Names one build's scratch directory on the pinned worker."""

    key: str


class GoldenRequest(Model):
    name: str
    namespace: str | None = None
    node_class: NodeClass
    timeout: timedelta = timedelta(hours=1)


class GoldenState(Model):
    name: str
    namespace: str | None
    phase: str
    disk_path: str | None = Field(None, description="simulated builder only: the disk it produced")
    pvc: str | None = Field(None, description="kubevirt builder: the DataVolume/PVC holding the built disk")


class ExportRequest(Model):
    key: str
    namespace: str
    name: str
    source_kind: Literal["VirtualMachine", "PersistentVolumeClaim"]
    source_name: str
    api_version: Literal["v1beta1", "v1"] = "v1"


class ExportLinks(Model):
    namespace: str
    name: str
    raw_url: str | None = None
    gzip_url: str | None = None


class DownloadRequest(Model):
    key: str
    links: ExportLinks


class DiskFile(Model):
    path: str
    size: int
    sha256: str | None = None


class ConvertRequest(Model):
    key: str
    source: DiskFile


class ConvertedDisk(Model):
    path: str
    size: int
    virtual_size: int


class ArchiveRequest(Model):
    bucket: str
    key: str
    object_key: str
    source: DiskFile


class ArchiveRecord(Model):
    url: str
    etag: str


class BuildRequest(Model):
    disk: ConvertedDisk
    target: str = Field(description="registry/repository:tag")
    builder: Literal["daemonless", "docker"]
    insecure: bool = False
    annotations: dict[str, str] = Field(default_factory=dict)


class BuiltImageModel(Model):
    builder: str
    target: str
    layer_digest: str | None = None
    layer_size: int | None = None
    manifest: str | None = None
    image_id: str | None = None


class PushRequest(Model):
    built: BuiltImageModel
    insecure: bool = False


class PushedImageModel(Model):
    reference: str
    tagged: str
    digest: str
    layer_digest: str | None = None


class PublishRequest(Model):
    node_class: str
    reference: str
    digest: str
    tag: str


class ExportRef(Model):
    namespace: str
    name: str
    api_version: Literal["v1beta1", "v1"] = "v1"


def image_tag(node_class: str, kubernetes_version: str, yyyymmdd: str) -> str:
    """`<node-class>-<kubernetes-version>-<yyyymmdd>`: readable, sortable per class, one per day."""
    return f"{node_class}-{kubernetes_version}-{yyyymmdd}"
