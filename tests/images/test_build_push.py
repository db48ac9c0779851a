"""Both builders against a real registry (and a real daemon): one layer, disk/ + one file, 107:107."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_pipeline.auth import Credentials, docker_config_credentials
from image_pipeline.builders import make_builder
from image_pipeline.daemonless import DaemonlessBuilder
from image_pipeline.errors import PermanentError
from image_pipeline.layer import layer_size
from image_pipeline.progress import Progress
from image_pipeline.reference import ImageRef
from image_pipeline.registry import RegistryClient
from tests.images.layer_check import assert_containerdisk, pull_single_layer, qemu_check, skopeo_inspect
from tests.images.servers import Registry


@pytest.mark.timeout(60)
async def test_daemonless_push_is_the_upstream_containerdisk_layout(
        registry: Registry, qcow2_disk: Path, tmp_path: Path) -> None:
    target = ImageRef(registry.host, "labrador/node-images", "cp-small-1.31.2-20261124")
    builder = DaemonlessBuilder(None)
    reports: list[Progress] = []
    built = await builder.build(qcow2_disk, target, progress=reports.append)
    pushed = await builder.push(built)

    assert reports[-1].done == reports[-1].total == layer_size(qcow2_disk.stat().st_size)  # noqa: ASYNC240
    info = skopeo_inspect(registry, str(target))
    assert info["Digest"] == pushed.digest
    assert len(info["Layers"]) == 1  # type: ignore[arg-type]
    entries, disk = pull_single_layer(registry, pushed.reference, tmp_path)
    assert_containerdisk(entries, dir_mode=0o555, file_mode=0o444)
    assert disk.read_bytes() == qcow2_disk.read_bytes()  # noqa: ASYNC240
    qemu_check(disk)


async def test_daemonless_rebuild_reuses_the_layer_and_gives_the_same_digest(
        registry: Registry, qcow2_disk: Path) -> None:
    target = ImageRef(registry.host, "labrador/again", "w-1.31.2-20261124")
    builder = DaemonlessBuilder(None)
    first = await builder.push(await builder.build(qcow2_disk, target))
    reports: list[Progress] = []
    second = await builder.push(await builder.build(qcow2_disk, target, progress=reports.append))
    assert second.digest == first.digest
    assert [r.detail for r in reports] == ["layer already in the registry"]


@pytest.mark.timeout(60)
async def test_daemonless_push_with_basic_auth_from_a_docker_config(
        auth_registry: Registry, qcow2_disk: Path, tmp_path: Path) -> None:
    import base64
    import json

    config = tmp_path / "config.json"
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    config.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    config.chmod(0o600)  # registry passwords: refused when others may read them
    credentials = docker_config_credentials(auth_registry.host, config)
    assert credentials is not None and credentials.username == "builder"

    target = ImageRef(auth_registry.host, "labrador/private", "cp-1.31.2-20261124")
    builder = make_builder("daemonless", credentials)
    pushed = await builder.push(await builder.build(qcow2_disk, target))
    entries, disk = pull_single_layer(auth_registry, pushed.reference, tmp_path)
    assert_containerdisk(entries, dir_mode=0o555, file_mode=0o444)
    qemu_check(disk)


async def test_wrong_password_is_refused_permanently(auth_registry: Registry, qcow2_disk: Path) -> None:
    target = ImageRef(auth_registry.host, "labrador/private", "nope-1.31.2-20261124")
    builder = make_builder("daemonless", Credentials("builder", "wrong"))
    with pytest.raises(PermanentError, match="refused"):
        await builder.build(qcow2_disk, target)
    async with RegistryClient(auth_registry.host, "labrador/private", None) as client:
        with pytest.raises(PermanentError, match="requires credentials"):
            await client.blob_exists("sha256:" + "0" * 64)


@pytest.mark.timeout(120)
async def test_docker_sdk_builder_pushes_one_layer_owned_by_qemu(
        docker_host: str, registry: Registry, qcow2_disk: Path, tmp_path: Path) -> None:
    target = ImageRef(registry.host, "labrador/docker-built", "cp-small-1.31.2-20261124")
    builder = make_builder("docker", None, docker_host=docker_host)
    built = await builder.build(qcow2_disk, target)
    pushed = await builder.push(built)
    assert pushed.digest.startswith("sha256:")
    assert skopeo_inspect(registry, str(target))["Digest"] == pushed.digest
    entries, disk = pull_single_layer(registry, pushed.reference, tmp_path)
    # The legacy builder's modes; KubeVirt accepts them (readable by 107).
    assert_containerdisk(entries, dir_mode=0o755, file_mode=0o644)
    qemu_check(disk)
