"""Images (#16 item 7): every input disk is inspected with real qemu-img before use; only a bootable
disk (boot signature) of a known format (raw, qcow2) without backing or external data files and with a
sane virtual size is converted, and a refused disk publishes nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.image_activities import ImageActivities
from cluster.published_images import JsonFilePublishedImages
from image_pipeline.convert import convert_to_qcow2, inspect_input
from image_pipeline.errors import PermanentError
from tests.images.servers import Registry, make_qcow2_disk, make_raw_disk
from tests.images.test_image_workflow import NODE_CLASS, run_workers, settings_for, start
from workflows.image_models import ImageBuildInput, ImageSource, SourceKind


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.img"
    path.write_text("not a disk at all\n")  # 18 bytes
    return path


def backed_by_a_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$y$SECRETHASH:19000::::::\n".ljust(2 << 20, b"\0"))
    child = tmp_path / "child.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(child))
    return child


def external_data_file(tmp_path: Path) -> Path:
    path = tmp_path / "split.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'split.data'}", str(path), "8M")
    return path


def other_format(tmp_path: Path) -> Path:
    raw = make_raw_disk(tmp_path / "v.raw", 4 << 20, 1 << 20)
    path = tmp_path / "disk.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(path))
    return path


def huge_virtual_size(tmp_path: Path) -> Path:
    path = tmp_path / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "4T")  # sparse: a few hundred KiB on disk
    return path


def unbootable_raw(tmp_path: Path) -> Path:
    path = tmp_path / "zeros.raw"
    with path.open("wb") as handle:
        handle.truncate(8 << 20)
    return path


def unbootable_qcow2(tmp_path: Path) -> Path:
    path = tmp_path / "empty.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "8M")
    return path


BAD = {
    "18-byte text file": (text_file, "virtual size"),
    "qcow2 with a backing file": (backed_by_a_secret, "backing file"),
    "qcow2 with an external data file": (external_data_file, "external data file"),
    "vmdk": (other_format, "format 'vmdk' is not accepted"),
    "4 TiB virtual size": (huge_virtual_size, "virtual size"),
    "raw without a boot signature": (unbootable_raw, "no boot signature"),
    "qcow2 without a boot signature": (unbootable_qcow2, "no boot signature"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_bad_input_disk_is_refused_before_conversion(tmp_path: Path, case: str) -> None:
    make, words = BAD[case]
    disk = make(tmp_path)
    with pytest.raises(PermanentError, match=words) as caught:
        await convert_to_qcow2(disk, tmp_path / "out.qcow2")
    assert "SECRETHASH" not in str(caught.value)
    assert not (tmp_path / "out.qcow2").exists() and not (tmp_path / "out.qcow2.tmp").exists()


async def test_bootable_raw_and_qcow2_disks_pass(tmp_path: Path) -> None:
    assert (await inspect_input(make_raw_disk(tmp_path / "ok.raw", 8 << 20, 1 << 20))).format == "raw"
    assert (await inspect_input(make_qcow2_disk(tmp_path / "ok.qcow2"))).format == "qcow2"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", ["18-byte text file", "qcow2 with a backing file"])
async def test_a_refused_disk_publishes_nothing(
    dev_env: WorkflowEnvironment, registry: Registry, tmp_path: Path, case: str
) -> None:
    settings = settings_for(tmp_path, registry)
    acts = ImageActivities(settings, f"{settings.task_queue}-pinned")
    disk = BAD[case][0](tmp_path)
    params = ImageBuildInput(node_class=NODE_CLASS, source=ImageSource(kind=SourceKind.DISK, path=str(disk)),
                             registry=registry.host)
    async for _ in run_workers(dev_env.client, acts, settings):
        with pytest.raises(WorkflowFailureError) as caught:
            await start(dev_env.client, settings, params)
    assert BAD[case][1] in str(caught.value.cause) or BAD[case][1] in repr(caught.value.cause.__dict__)
    assert JsonFilePublishedImages.in_data_dir(settings.data_dir).all() == {}
