"""Fixtures for the image pipeline tests: every server on loopback, started here, stopped here."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.images.servers import (
    ExportServer,
    Registry,
    make_qcow2_disk,
    make_raw_disk,
    run_dockerd,
    run_moto,
    run_registry,
)


@pytest.fixture(scope="session")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="session")
def registry(images_root: Path) -> Iterator[Registry]:
    with run_registry(images_root / "registry") as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(images_root: Path) -> Iterator[Registry]:
    with run_registry(images_root / "auth-registry", username="builder", password=secrets.token_hex(8)) as reg:
        yield reg


@pytest.fixture(scope="session")
def docker_host(images_root: Path) -> Iterator[str]:
    # Short path: unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="lbd-", dir="/tmp"))
    try:
        with run_dockerd(root) as host:
            yield host
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def moto_endpoint(images_root: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        with run_moto(images_root / "moto") as endpoint:
            yield endpoint


@pytest.fixture(scope="session")
def qcow2_disk(images_root: Path) -> Path:
    return make_qcow2_disk(images_root / "small.qcow2")


@pytest.fixture
def raw_disk(tmp_path: Path) -> Path:
    return make_raw_disk(tmp_path / "export.img", 6 << 20, 6 << 20)


@pytest.fixture
async def export_server(raw_disk: Path) -> AsyncIterator[ExportServer]:
    server = ExportServer(raw_disk, token=secrets.token_urlsafe(16))
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()
