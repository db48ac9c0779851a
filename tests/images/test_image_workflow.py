"""ImageBuildWorkflow end to end on the dev server: real activities, real registry, real qemu-img."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.image_activities import ImageActivities
from cluster.published_images import JsonFilePublishedImages
from labrador.settings import Settings
from labs.models import NodeClass
from tests.images.layer_check import assert_containerdisk, pull_single_layer, qemu_check, skopeo_inspect
from tests.images.servers import ExportServer, Registry, make_qcow2_disk
from workflows.image_build import ImageBuildWorkflow
from workflows.image_models import (
    IMAGE_BUILD_WORKFLOW,
    ImageActivityName,
    ImageBuildInput,
    ImageBuildResult,
    ImageSource,
    SourceKind,
    WorkerQueue,
)

NODE_CLASS = NodeClass(
    name="cp-small", role="controlplane", image="127.0.0.1:1/base/ubuntu:24.04", kubernetes_version="1.31.2",
    build={"base_image": "127.0.0.1:1/base/ubuntu:24.04", "install_script": "apt-get install -y kubeadm"},
)


def settings_for(tmp_path: Path, registry: Registry, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", image_work_dir=tmp_path / "work", registry=registry.host,
                    registry_auth="none", task_queue=f"images-{uuid.uuid4().hex[:8]}", **extra)


async def run_workers(client: Client, acts: ImageActivities, settings: Settings,
                      extra_shared: list[Any] | None = None) -> AsyncIterator[None]:
    shared = [a for a in acts.shared() if extra_shared is None or a.__name__ != "worker_queue"] + (extra_shared or [])
    async with Worker(client, task_queue=settings.task_queue, workflows=[ImageBuildWorkflow], activities=shared), \
            Worker(client, task_queue=acts.worker_queue_name, activities=acts.pinned()):
        yield


async def start(client: Client, settings: Settings, params: ImageBuildInput) -> ImageBuildResult:
    result: ImageBuildResult = await client.execute_workflow(
        IMAGE_BUILD_WORKFLOW, params, id=f"image-build/{uuid.uuid4().hex[:8]}", task_queue=settings.task_queue,
        result_type=ImageBuildResult, execution_timeout=timedelta(minutes=2))
    return result


@pytest.mark.timeout(90)
async def test_build_from_a_local_disk_ends_with_a_published_digest(
        dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, registry)
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned")
    disk = make_qcow2_disk(tmp_path / "golden.qcow2")
    params = ImageBuildInput(node_class=NODE_CLASS, source=ImageSource(kind=SourceKind.DISK, path=str(disk)),
                             registry=registry.host)
    async for _ in run_workers(dev_env.client, acts, settings):
        result = await start(dev_env.client, settings, params)

    assert result.tag.startswith("cp-small-1.31.2-") and len(result.tag) == len("cp-small-1.31.2-20261124")
    assert result.worker_queue == acts.worker_queue_name
    assert skopeo_inspect(registry, result.tagged)["Digest"] == result.digest
    published = JsonFilePublishedImages.in_data_dir(settings.data_dir).all()
    assert published["cp-small"].digest == result.digest
    assert published["cp-small"].reference == result.reference == f"{result.tagged.rsplit(':', 1)[0]}@{result.digest}"
    entries, pulled = pull_single_layer(registry, result.reference, tmp_path)
    assert_containerdisk(entries, dir_mode=0o555, file_mode=0o444)
    qemu_check(pulled)
    assert not any((tmp_path / "work").iterdir()), "scratch files must be removed"


@pytest.mark.timeout(90)
async def test_golden_build_with_the_simulated_builder_deletes_the_builder(
        dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, registry)
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned")
    params = ImageBuildInput(node_class=NODE_CLASS, source=ImageSource(kind=SourceKind.GOLDEN, namespace="images"),
                             registry=registry.host)
    async for _ in run_workers(dev_env.client, acts, settings):
        result = await start(dev_env.client, settings, params)
    assert result.published and result.virtual_size == 64 << 20
    assert list((settings.data_dir / "golden-builders").iterdir()) == []


@pytest.mark.timeout(90)
async def test_failed_golden_build_publishes_nothing_and_cleans_up(
        dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path) -> None:
    from image_pipeline.golden import SimulatedGoldenBuilder

    settings = settings_for(tmp_path, registry)
    builder = SimulatedGoldenBuilder(tmp_path / "builders", fail_classes=frozenset({"cp-small"}))
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned", golden_builder=builder)
    params = ImageBuildInput(node_class=NODE_CLASS, source=ImageSource(kind=SourceKind.GOLDEN, namespace="images"),
                             registry=registry.host)
    async for _ in run_workers(dev_env.client, acts, settings):
        with pytest.raises(WorkflowFailureError) as failure:
            await start(dev_env.client, settings, params)
    assert "CrashLoopBackOff" in str(failure.value.cause.cause)  # type: ignore[union-attr]
    assert list((tmp_path / "builders").iterdir()) == []
    assert JsonFilePublishedImages.in_data_dir(settings.data_dir).all() == {}


@pytest.mark.timeout(90)
async def test_a_vanished_worker_moves_the_file_chain_to_another(
        dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, registry)
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned")
    handed_out: list[str] = []

    @activity.defn(name=ImageActivityName.WORKER_QUEUE)
    async def first_a_dead_worker() -> WorkerQueue:
        queue = f"{settings.task_queue}-dead" if not handed_out else acts.worker_queue_name
        handed_out.append(queue)
        return WorkerQueue(queue=queue)

    disk = make_qcow2_disk(tmp_path / "golden.qcow2")
    params = ImageBuildInput(node_class=NODE_CLASS, source=ImageSource(kind=SourceKind.DISK, path=str(disk)),
                             registry=registry.host, pinned_schedule_to_start=timedelta(seconds=2))
    async for _ in run_workers(dev_env.client, acts, settings, extra_shared=[first_a_dead_worker]):
        result = await start(dev_env.client, settings, params)
    assert handed_out == [f"{settings.task_queue}-dead", acts.worker_queue_name]
    assert result.worker_queue == acts.worker_queue_name and result.published


# --- export from a (emulated) cluster -------------------------------------------------------------



async def fake_export_controller(emu: kmock.KubernetesEmulator, server: ExportServer) -> None:
    """Plays KubeVirt's export controller: takes the token from the Secret, marks the export Ready."""
    while True:
        for (resource, _namespace, _name), obj in list(emu.objects.items()):
            if resource.plural == "virtualmachineexports" and not obj.deleted and not obj.get("status"):
                secrets = {n: o for (r, _, n), o in emu.objects.items() if r.plural == "secrets" and not o.deleted}
                token = secrets[obj["spec"]["tokenSecretRef"]]["stringData"]["token"]
                server.token = token
                obj.patch({"status": {"phase": "Ready", "links": {"internal": {"volumes": [{
                    "name": "disk", "formats": [{"format": "raw", "url": server.raw_url},
                                                {"format": "gzip", "url": server.gzip_url}]}]}}}})
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_export_of_a_stopped_vm_resumes_after_a_cut_and_deletes_the_export(
        dev_env: WorkflowEnvironment, registry: Registry, export_server: ExportServer, moto_endpoint: str,
        tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket="exports")
    size = export_server.disk.stat().st_size
    export_server.cut_at = int(size * 0.9)
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emu.resources["export.kubevirt.io/v1beta1/virtualmachineexports"] = {}
        emu.resources["v1/secrets"] = {}
        config = kubernetes.client.Configuration()
        config.host = str(server.url)
        settings = settings_for(tmp_path, registry, cluster_backend="kubevirt", export_api_version="v1beta1",
                                aws_endpoint_url=moto_endpoint)
        acts = ImageActivities(settings, f"{settings.task_queue}-pinned",
                               api_client_factory=lambda: kubernetes.client.ApiClient(config),
                               published_images=JsonFilePublishedImages.in_data_dir(settings.data_dir))
        acts.export_poll = 0.1
        controller = asyncio.create_task(fake_export_controller(emu, export_server))
        params = ImageBuildInput(node_class=NODE_CLASS, registry=registry.host, export_api_version="v1beta1",
                                 archive_bucket="exports",
                                 source=ImageSource(kind=SourceKind.VM, namespace="golden", name="builder-vm"))
        try:
            async for _ in run_workers(dev_env.client, acts, settings):
                result = await start(dev_env.client, settings, params)
        finally:
            controller.cancel()
        live = [(r.plural, n) for (r, _, n), o in emu.objects.items() if not o.deleted]
        export = next(o for (r, _, _), o in emu.objects.items() if r.plural == "virtualmachineexports")

    assert live == [], "export and token secret are deleted"
    assert export.history[0]["spec"]["source"] == {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
                                                   "name": "builder-vm"}
    assert len(export_server.sent) == 2 and export_server.ranges[1] is not None
    assert export_server.sent[1] <= size - int(size * 0.9) + (1 << 20)
    assert result.disk_sha256 is not None and result.published
    assert result.archive is not None and result.archive.startswith("s3://exports/cp-small/")
    archived = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").get_object(
        Bucket="exports", Key=result.archive.removeprefix("s3://exports/"))["Body"].read()
    assert archived == export_server.disk.read_bytes()
    assert json.loads((settings.data_dir / "published-images.json").read_text())["cp-small"]["digest"] == result.digest


def test_stale_scratch_dirs_are_swept_and_fresh_ones_kept(registry: Registry, tmp_path: Path) -> None:
    import os
    import time

    settings = settings_for(tmp_path, registry)
    acts = ImageActivities(settings, "q")
    old, fresh = acts.work_dir("abc-1"), acts.work_dir("def-1")
    (old / "export.img.part").write_bytes(b"x")
    (fresh / "disk.qcow2").write_bytes(b"y")
    two_days_ago = time.time() - 2 * 86400
    for path in (old / "export.img.part", old):
        os.utime(path, (two_days_ago, two_days_ago))
    assert acts.sweep_stale() == ["abc-1"]
    assert not old.exists() and (fresh / "disk.qcow2").exists()


@pytest.mark.timeout(120)
async def test_docker_builder_through_the_workflow_leaves_no_local_image(
        dev_env: WorkflowEnvironment, registry: Registry, docker_host: str, tmp_path: Path) -> None:
    import docker

    settings = settings_for(tmp_path, registry, docker_host=docker_host)
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned")
    disk = make_qcow2_disk(tmp_path / "golden.qcow2")
    params = ImageBuildInput(node_class=NODE_CLASS.model_copy(update={"name": "w-docker"}), builder="docker",
                             source=ImageSource(kind=SourceKind.DISK, path=str(disk)), registry=registry.host)
    async for _ in run_workers(dev_env.client, acts, settings):
        result = await start(dev_env.client, settings, params)
    assert skopeo_inspect(registry, result.tagged)["Digest"] == result.digest
    entries, pulled = pull_single_layer(registry, result.reference, tmp_path)
    assert_containerdisk(entries, dir_mode=0o755, file_mode=0o644)
    qemu_check(pulled)
    client = docker.APIClient(base_url=docker_host)
    assert not [i for i in client.images() if any(result.tagged == t for t in i.get("RepoTags") or [])]
