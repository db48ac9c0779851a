"""ImageBuildWorkflow: turn a VM disk into a pinned containerDisk image and publish it.

```
[golden build: builder VM boots, installs, powers off]            (shared queue)
   ─► pick a worker: its own task queue                           (shared queue)
   ─► export ready ─► download ─► convert ─► [archive] ─► build ─► push   (that worker's queue)
   ─► publish the digest as the class's current image             (shared queue)
cleanup in every outcome: scratch files (that worker), export objects, builder VM
```

The file chain runs on one worker (Temporal's worker-specific task queue pattern) because its state
is on that worker's disk: a retried download resumes from the partial file, a retried build finds
its converted disk. If that worker disappears, the next activity is never picked up, its
schedule-to-start timeout fires, and the chain starts over on another worker (up to
`pinned_attempts` workers).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from cluster.naming import dns_label, short_hash
    from workflows.image_models import (
        IMAGE_BUILD_WORKFLOW,
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
        ImageBuildInput,
        ImageBuildResult,
        ImageBuildStatus,
        PublishRequest,
        PushedImageModel,
        PushRequest,
        SourceKind,
        WorkerQueue,
        WorkKey,
        image_tag,
    )

PERMANENT = ["PermanentError"]
SHARED_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                           maximum_attempts=10, non_retryable_error_types=PERMANENT)
PINNED_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=20),
                           maximum_attempts=6, non_retryable_error_types=PERMANENT)
# How long a pinned step may wait for its worker before we decide that worker is gone.
PINNED_SCHEDULE_TO_START = timedelta(minutes=2)
HEARTBEAT = timedelta(seconds=60)


def _worker_gone(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, TimeoutError) and cause.type == TimeoutType.SCHEDULE_TO_START


@workflow.defn(name=IMAGE_BUILD_WORKFLOW)
class ImageBuildWorkflow:
    def __init__(self) -> None:
        self._status = ImageBuildStatus(step="queued")
        self._schedule_to_start = PINNED_SCHEDULE_TO_START
        self._builder: GoldenState | None = None  # set once a builder VM may exist: cleanup needs it

    @workflow.query
    def status(self) -> ImageBuildStatus:
        return self._status

    def _step(self, step: str, **changes: Any) -> None:
        self._status = self._status.model_copy(update={"step": step, **changes})

    async def _shared(self, name: ImageActivityName, arg: Any, result_type: type[Any] | None,
                      limit: timedelta = timedelta(minutes=5), heartbeat: timedelta | None = None) -> Any:
        return await workflow.execute_activity(
            name, args=[] if arg is None else [arg], result_type=result_type, start_to_close_timeout=limit,
            heartbeat_timeout=heartbeat, retry_policy=SHARED_RETRY)

    async def _pinned(self, queue: str, name: ImageActivityName, arg: Any, result_type: type[Any] | None,
                      limit: timedelta) -> Any:
        return await workflow.execute_activity(
            name, arg, result_type=result_type, task_queue=queue, start_to_close_timeout=limit,
            schedule_to_start_timeout=self._schedule_to_start, heartbeat_timeout=HEARTBEAT,
            retry_policy=PINNED_RETRY)

    @workflow.run
    async def run(self, params: ImageBuildInput) -> ImageBuildResult:
        info = workflow.info()
        self._schedule_to_start = params.pinned_schedule_to_start
        node_class = params.node_class
        tag = image_tag(node_class.name, node_class.kubernetes_version, workflow.now().strftime("%Y%m%d"))
        target = f"{params.registry}/{params.repository}:{tag}"
        run_hash = short_hash(info.run_id, 8)
        golden: GoldenState | None = None
        try:
            if params.source.kind == SourceKind.GOLDEN:
                golden = await self._golden_build(params, dns_label("labrador-build", node_class.name, run_hash))
            for attempt in range(1, params.pinned_attempts + 1):
                self._step("picking a worker", attempt=attempt)
                queue: WorkerQueue = await self._shared(ImageActivityName.WORKER_QUEUE, None, WorkerQueue,
                                                        limit=timedelta(seconds=30))
                self._step("picked a worker", worker_queue=queue.queue)
                key = WorkKey(key=f"{run_hash}-{attempt}")
                try:
                    pushed, converted, disk, archive = await self._file_chain(
                        params, queue.queue, key, golden, target, run_hash)
                    break
                except ActivityError as err:
                    if _worker_gone(err) and attempt < params.pinned_attempts:
                        workflow.logger.warning("worker %s is gone; the file chain moves to another", queue.queue)
                        continue
                    raise
        finally:
            if self._builder is not None:
                self._step("deleting the builder VM")
                await self._shared(ImageActivityName.GOLDEN_DELETE, self._builder, None)

        published = False
        if params.publish:
            self._step("publishing")
            await self._shared(ImageActivityName.PUBLISH, PublishRequest(
                node_class=node_class.name, reference=pushed.reference, digest=pushed.digest, tag=tag), None)
            published = True
        self._step("done", detail=pushed.reference)
        return ImageBuildResult(
            node_class=node_class.name, reference=pushed.reference, tagged=pushed.tagged, tag=tag,
            digest=pushed.digest, virtual_size=converted.virtual_size, disk_sha256=disk.sha256,
            layer_digest=pushed.layer_digest, archive=archive.url if archive else None, published=published,
            worker_queue=queue.queue)

    async def _golden_build(self, params: ImageBuildInput, name: str) -> GoldenState:
        if params.node_class.build is None:
            raise ApplicationError(f"node class {params.node_class.name!r} has no build recipe: nothing to build "
                                   "a golden image from", type="PermanentError", non_retryable=True)
        request = GoldenRequest(name=name, namespace=params.source.namespace, node_class=params.node_class,
                                timeout=params.golden_timeout)
        self._step("starting the builder VM")
        self._builder = GoldenState(name=name, namespace=params.source.namespace, phase="Starting")
        self._builder = await self._shared(ImageActivityName.GOLDEN_START, request, GoldenState)
        self._step("waiting for the builder VM to power off")
        state: GoldenState = await self._shared(ImageActivityName.GOLDEN_WAIT, request, GoldenState,
                                                limit=params.golden_timeout + timedelta(minutes=5),
                                                heartbeat=HEARTBEAT)
        return state

    async def _file_chain(
        self, params: ImageBuildInput, queue: str, key: WorkKey, golden: GoldenState | None, target: str,
        run_hash: str,
    ) -> tuple[PushedImageModel, ConvertedDisk, DiskFile, ArchiveRecord | None]:
        timeout = params.step_timeout
        export: ExportRef | None = None
        archive: ArchiveRecord | None = None
        worker_gone = False
        try:
            source = params.source
            if golden is not None and golden.disk_path:  # the simulated builder leaves a disk file
                disk = DiskFile(path=golden.disk_path, size=0)
            elif source.kind == SourceKind.DISK:
                disk = DiskFile(path=source.path or "", size=0)
            else:
                namespace = (golden.namespace if golden else source.namespace) or ""
                source_name = (golden.pvc or golden.name) if golden else source.name or ""
                request = ExportRequest(
                    # One export (and token) per worker attempt: a new worker never meets the old token.
                    key=key.key, namespace=namespace, name=dns_label("labrador-export", source_name, key.key),
                    source_kind="VirtualMachine" if source.kind == SourceKind.VM else "PersistentVolumeClaim",
                    source_name=source_name, api_version=params.export_api_version)
                export = ExportRef(namespace=namespace, name=request.name, api_version=params.export_api_version)
                self._step("waiting for the export")
                links: ExportLinks = await self._pinned(queue, ImageActivityName.EXPORT_PREPARE, request,
                                                        ExportLinks, timedelta(minutes=30))
                self._step("downloading")
                disk = await self._pinned(queue, ImageActivityName.DOWNLOAD, DownloadRequest(key=key.key, links=links),
                                          DiskFile, timeout)
                self._step("deleting the export")
                await self._shared(ImageActivityName.EXPORT_DELETE, export, None)
                export = None
                if params.archive_bucket:
                    self._step("archiving to S3")
                    archive = await self._pinned(queue, ImageActivityName.ARCHIVE, ArchiveRequest(
                        bucket=params.archive_bucket, key=key.key, source=disk,
                        object_key=f"{params.node_class.name}/{target.rsplit(':', 1)[1]}-{run_hash}.raw"),
                        ArchiveRecord, timeout)
            self._step("converting")
            converted: ConvertedDisk = await self._pinned(
                queue, ImageActivityName.CONVERT, ConvertRequest(key=key.key, source=disk), ConvertedDisk, timeout)
            self._step("building")
            built: BuiltImageModel = await self._pinned(queue, ImageActivityName.BUILD, BuildRequest(
                disk=converted, target=target, builder=params.builder, insecure=params.insecure, annotations={
                    "org.opencontainers.image.title": f"{params.node_class.name} containerDisk",
                    "io.labrador.node-class": params.node_class.name,
                    "io.labrador.kubernetes-version": params.node_class.kubernetes_version,
                    "io.labrador.source": params.source.describe(),
                }), BuiltImageModel, timeout)
            self._step("pushing")
            pushed: PushedImageModel = await self._pinned(
                queue, ImageActivityName.PUSH, PushRequest(built=built, insecure=params.insecure),
                PushedImageModel, timeout)
            return pushed, converted, disk, archive
        except ActivityError as err:
            worker_gone = _worker_gone(err)
            raise
        finally:
            if export is not None:
                await self._shared(ImageActivityName.EXPORT_DELETE, export, None)
            # Scratch files live on that worker only; if it is gone, so are they.
            if not worker_gone:
                try:
                    await workflow.execute_activity(
                        ImageActivityName.CLEANUP_FILES, key, task_queue=queue,
                        start_to_close_timeout=timedelta(minutes=2),
                        schedule_to_start_timeout=self._schedule_to_start, retry_policy=RetryPolicy(maximum_attempts=3))
                except ActivityError:
                    workflow.logger.warning("scratch files of %s on %s were not removed", key.key, queue)
