"""Image pipeline activities: unpack a model, call image_pipeline, heartbeat, map errors.

Two groups. `shared()` runs on the shared task queue (any worker): pick a worker, golden builder VM,
export deletion, publish. `pinned()` runs on this worker's own queue: everything that touches
scratch files (export token, partial download, qcow2, built image), so retries find them here.
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from cluster.published_images import JsonFilePublishedImages, PublishedImages
from cluster.settings import Settings
from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress
from workflows.image_models import (
    ArchiveRecord,
    ArchiveRequest,
    BuildRequest,
    BuiltImageModel,
    ConvertedDisk,
    ConvertRequest,
    DiskFile,
    DownloadRequest,
    ExportLinks,
    ExportRef,
    ExportRequest,
    GoldenRequest,
    GoldenState,
    ImageActivityName,
    PublishRequest,
    PushedImageModel,
    PushRequest,
    WorkerQueue,
    WorkKey,
)

P = ParamSpec("P")
T = TypeVar("T")
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")
HEARTBEAT_EVERY = 2.0


def _mapped(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Permanent failures become non-retryable ApplicationErrors; messages name what was wrong."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except PermanentError as exc:
            raise ApplicationError(str(exc), type="PermanentError", non_retryable=True) from exc
        except PipelineError as exc:
            raise ApplicationError(str(exc), type="PipelineError") from exc
        except Exception as exc:
            status = getattr(exc, "status", None)  # kubernetes ApiException
            if isinstance(status, int) and status in (400, 401, 403, 404, 422):
                reason = getattr(exc, "reason", "")
                raise ApplicationError(f"Kubernetes API refused the request: HTTP {status} {reason}",
                                       type="PermanentError", non_retryable=True) from exc
            if exc.__class__.__name__ == "ExportFailed":
                raise ApplicationError(str(exc), type="PermanentError", non_retryable=True) from exc
            raise

    return wrapper


class Heartbeat:
    """Keeps the latest progress and heartbeats it every few seconds from the event loop.

    Progress callbacks may come from threads (docker SDK, boto3); they only set a field. The loop
    keeps beating while a step reports nothing (docker build, qemu-img check), so the heartbeat
    timeout measures a live worker, not a chatty step.
    """

    def __init__(self, step: str) -> None:
        self.latest: Progress = Progress(step, 0)
        self.extra: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    def __call__(self, progress: Progress) -> None:
        self.latest = progress

    def details(self) -> dict[str, Any]:
        p = self.latest
        return {"step": p.step, "done": p.done, "total": p.total, "detail": p.detail, **self.extra}

    async def _loop(self) -> None:
        while True:
            activity.heartbeat(self.details())
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        activity.heartbeat(self.details())


def default_api_client(settings: Settings) -> Any:
    """The kubevirt backend's client: kube_config / KUBECONFIG / ~/.kube/config, else in-cluster."""
    from cluster.kubevirt.api import load_api_client

    return load_api_client(str(settings.kube_config) if settings.kube_config else None)


class ImageActivities:
    def __init__(self, settings: Settings, worker_queue: str, *,
                 api_client_factory: Callable[[], Any] | None = None,
                 golden_builder: Any | None = None, published_images: PublishedImages | None = None) -> None:
        self.settings = settings
        self.worker_queue_name = worker_queue
        self.work_root = settings.image_work_dir or settings.data_dir / "image-work"
        self._api_client_factory = api_client_factory or (lambda: default_api_client(settings))
        self._api_client: Any = None
        self._golden_builder = golden_builder
        # The shell picks the store (labrador.published_images); without one, the data dir's JSON
        # file (what simulated mode uses).
        self._published_images = published_images or JsonFilePublishedImages.in_data_dir(settings.data_dir)
        self.export_poll = 2.0  # seconds between export status reads

    # --- helpers ------------------------------------------------------------------------------

    def api_client(self) -> Any:
        if self._api_client is None:
            self._api_client = self._api_client_factory()
        return self._api_client

    def golden_builder(self) -> Any:
        if self._golden_builder is None:
            from image_pipeline.golden import KubeVirtGoldenBuilder, SimulatedGoldenBuilder

            if self.settings.cluster_backend == "kubevirt":
                self._golden_builder = KubeVirtGoldenBuilder(self.api_client())
            else:
                self._golden_builder = SimulatedGoldenBuilder(self.settings.data_dir / "golden-builders")
        return self._golden_builder

    def published_images(self) -> PublishedImages:
        return self._published_images

    def work_dir(self, key: str) -> Path:
        if not _KEY_RE.fullmatch(key):
            raise PermanentError(f"work key {key!r} is not a safe directory name")
        path = self.work_root / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def credentials(self, registry: str) -> Any:
        from image_pipeline.auth import resolve_credentials

        return resolve_credentials(registry, self.settings.registry_auth, docker_config=self.settings.docker_config,
                                   aws_endpoint_url=self.settings.aws_endpoint_url)

    def _export_client(self, api_version: str) -> Any:
        from cluster.kubevirt.export import ExportClient

        return ExportClient(self.api_client(), api_version)  # type: ignore[arg-type]

    # --- shared queue ---------------------------------------------------------------------------

    @activity.defn(name=ImageActivityName.WORKER_QUEUE)
    async def worker_queue(self) -> WorkerQueue:
        """Whoever picks this up owns the file chain: answer with this worker's own queue."""
        return WorkerQueue(queue=self.worker_queue_name)

    @activity.defn(name=ImageActivityName.GOLDEN_START)
    @_mapped
    async def golden_start(self, request: GoldenRequest) -> GoldenState:
        namespace = request.namespace or self.settings.image_source_namespaces[0]
        await asyncio.to_thread(self.golden_builder().start, request.name, namespace, request.node_class)
        return GoldenState(name=request.name, namespace=namespace, phase="Pending")

    @activity.defn(name=ImageActivityName.GOLDEN_WAIT)
    @_mapped
    async def golden_wait(self, request: GoldenRequest) -> GoldenState:
        from image_pipeline.golden import wait_powered_off

        namespace = request.namespace or self.settings.image_source_namespaces[0]
        previous = activity.info().heartbeat_details
        seen_running = bool(previous and isinstance(previous[0], dict) and previous[0].get("seen_running"))

        def beat(observation: Any, running: bool) -> None:
            activity.heartbeat({"phase": observation.phase, "reason": observation.reason, "seen_running": running})

        observation = await wait_powered_off(
            self.golden_builder(), request.name, namespace, limit=request.timeout.total_seconds(),
            poll=self._builder_poll_seconds(), seen_running=seen_running, on_poll=beat)
        return GoldenState(name=request.name, namespace=namespace, phase=observation.phase,
                           disk_path=observation.disk_path, pvc=observation.pvc)

    def _builder_poll_seconds(self) -> float:
        return 0.2 if self.settings.cluster_backend == "simulated" else 5.0

    @activity.defn(name=ImageActivityName.GOLDEN_DELETE)
    @_mapped
    async def golden_delete(self, state: GoldenState) -> None:
        await asyncio.to_thread(self.golden_builder().delete, state.name,
                                state.namespace or self.settings.image_source_namespaces[0])

    @activity.defn(name=ImageActivityName.EXPORT_DELETE)
    @_mapped
    async def export_delete(self, ref: ExportRef) -> None:
        await asyncio.to_thread(self._export_client(ref.api_version).delete, ref.namespace, ref.name)

    @activity.defn(name=ImageActivityName.PUBLISH)
    @_mapped
    async def publish(self, request: PublishRequest) -> None:
        from image_pipeline.publish import publish

        await asyncio.to_thread(publish, self.published_images(), request.node_class, request.reference,
                                request.digest, request.tag)

    # --- this worker's queue ------------------------------------------------------------------------

    @activity.defn(name=ImageActivityName.EXPORT_PREPARE)
    @_mapped
    async def export_prepare(self, request: ExportRequest) -> ExportLinks:
        """Token Secret + export, then wait for Ready. The token stays in this worker's scratch dir."""
        work = self.work_dir(request.key)
        token_file = work / "export-token"
        new_token = not token_file.exists()
        if new_token:
            token_file.touch(mode=0o600)
            token_file.write_text(secrets.token_urlsafe(32))
        token = token_file.read_text()
        client = self._export_client(request.api_version)
        await asyncio.to_thread(functools.partial(
            client.ensure, request.namespace, request.name, request.source_kind, request.source_name, token,
            new_token=new_token))
        async with Heartbeat("export") as beat:
            status = await asyncio.to_thread(
                client.wait_ready, request.namespace, request.name, timeout=25 * 60, poll=self.export_poll,
                on_poll=lambda s: beat(Progress("export", 0, None, s.phase)))
        if status.cert:
            (work / "export-ca.pem").write_text(status.cert)
        return ExportLinks(namespace=request.namespace, name=request.name, raw_url=status.raw_url,
                           gzip_url=status.gzip_url)

    @activity.defn(name=ImageActivityName.DOWNLOAD)
    @_mapped
    async def download(self, request: DownloadRequest) -> DiskFile:
        from image_pipeline.download import download_export

        work = self.work_dir(request.key)
        token_file = work / "export-token"
        if not token_file.exists():
            raise PermanentError("the export token is not on this worker; the chain must start over")
        ca = work / "export-ca.pem"
        async with Heartbeat("download") as beat:
            result = await download_export(
                request.links.raw_url, request.links.gzip_url, work / "export.img", token_file.read_text(),
                progress=beat, verify_tls=str(ca) if ca.exists() else True)
        activity.logger.info("downloaded %s bytes (%s, resumed from %s)", result.size, result.format,
                             result.resumed_from)
        return DiskFile(path=result.path, size=result.size, sha256=result.sha256)

    @activity.defn(name=ImageActivityName.CONVERT)
    @_mapped
    async def convert(self, request: ConvertRequest) -> ConvertedDisk:
        from image_pipeline.convert import convert_to_qcow2

        work = self.work_dir(request.key)
        async with Heartbeat("convert") as beat:
            result = await convert_to_qcow2(Path(request.source.path), work / "disk.qcow2", progress=beat)
        return ConvertedDisk(path=result.path, size=result.size, virtual_size=result.virtual_size)

    @activity.defn(name=ImageActivityName.ARCHIVE)
    @_mapped
    async def archive(self, request: ArchiveRequest) -> ArchiveRecord:
        from image_pipeline.archive import archive_to_s3

        async with Heartbeat("archive") as beat:
            result = await asyncio.to_thread(
                archive_to_s3, Path(request.source.path), request.bucket, request.object_key,
                endpoint_url=self.settings.aws_endpoint_url, progress=beat)
        return ArchiveRecord(url=f"s3://{result.bucket}/{result.key}", etag=result.etag)

    @activity.defn(name=ImageActivityName.BUILD)
    @_mapped
    async def build(self, request: BuildRequest) -> BuiltImageModel:
        from image_pipeline.builders import make_builder
        from image_pipeline.daemonless import DaemonlessBuilder
        from image_pipeline.reference import ImageRef

        target = ImageRef.parse(request.target)
        credentials = await asyncio.to_thread(self.credentials, target.registry)
        builder = make_builder(request.builder, credentials, insecure=request.insecure,
                               docker_host=self.settings.docker_host)
        if isinstance(builder, DaemonlessBuilder):
            builder.annotations = request.annotations or None
        async with Heartbeat("build") as beat:
            built = await builder.build(Path(request.disk.path), target, progress=beat)
        return BuiltImageModel(**vars(built))

    @activity.defn(name=ImageActivityName.PUSH)
    @_mapped
    async def push(self, request: PushRequest) -> PushedImageModel:
        from image_pipeline.builders import make_builder
        from image_pipeline.built_image import BuiltImage
        from image_pipeline.docker_builder import DockerBuilder
        from image_pipeline.reference import ImageRef

        built = BuiltImage(**request.built.model_dump())
        credentials = await asyncio.to_thread(self.credentials, ImageRef.parse(built.target).registry)
        builder = make_builder(built.builder, credentials, insecure=request.insecure,  # type: ignore[arg-type]
                               docker_host=self.settings.docker_host)
        async with Heartbeat("push") as beat:
            pushed = await builder.push(built, progress=beat)
        if isinstance(builder, DockerBuilder):
            await asyncio.to_thread(builder.remove_local, built)
        return PushedImageModel(**vars(pushed))

    @activity.defn(name=ImageActivityName.CLEANUP_FILES)
    @_mapped
    async def cleanup_files(self, key: WorkKey) -> None:
        path = self.work_dir(key.key)
        await asyncio.to_thread(shutil.rmtree, path, True)

    def sweep_stale(self, max_age_seconds: float = 24 * 3600) -> list[str]:
        """Remove scratch dirs nobody touched for a day: chains whose worker died before cleanup.

        Run when a worker starts (its queue is new, so no live chain of this process owns them).
        """
        if not self.work_root.is_dir():
            return []
        removed = []
        now = time.time()
        for entry in self.work_root.iterdir():
            newest = max((p.stat().st_mtime for p in entry.rglob("*")), default=entry.stat().st_mtime)
            if entry.is_dir() and now - max(newest, entry.stat().st_mtime) > max_age_seconds:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed

    # --- registration -------------------------------------------------------------------------------

    def shared(self) -> list[Callable[..., Any]]:
        return [self.worker_queue, self.golden_start, self.golden_wait, self.golden_delete, self.export_delete,
                self.publish]

    def pinned(self) -> list[Callable[..., Any]]:
        return [self.export_prepare, self.download, self.convert, self.archive, self.build, self.push,
                self.cleanup_files]


