"""The daemonless builder: stream the upstream containerDisk layer into the registry.

The disk file is read once. A worker thread reads and hashes the next block while the event loop
sends the previous one, so hashing and the socket overlap. The layer digest (= its diff_id, the layer
is uncompressed) is cached beside the disk, so a retried build finds the blob already in the registry
and skips the upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from image_pipeline.auth import Credentials
from image_pipeline.built_image import BuiltImage, PushedImage
from image_pipeline.layer import iter_layer, layer_size
from image_pipeline.progress import Progress, ProgressCallback, ignore
from image_pipeline.reference import ImageRef
from image_pipeline.registry import OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, RegistryClient

_SENTINEL = b""


def image_config(layer_digest: str, architecture: str = "amd64") -> bytes:
    config = {
        "architecture": architecture,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "labrador image pipeline: containerDisk layer (disk/, uid 107)"}],
    }
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def image_manifest(config: bytes, config_digest: str, layer_digest: str, size: int,
                   annotations: dict[str, str] | None = None) -> bytes:
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer_digest, "size": size}],
    }
    if annotations:
        manifest["annotations"] = annotations
    return json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()


def _cache_path(disk: Path) -> Path:
    return disk.with_name(disk.name + ".layer.json")


def _cached_layer(disk: Path) -> tuple[str, int] | None:
    try:
        data = json.loads(_cache_path(disk).read_text())
        stat = disk.stat()
        if data["disk_size"] == stat.st_size and data["mtime_ns"] == stat.st_mtime_ns:
            return str(data["digest"]), int(data["size"])
    except (OSError, ValueError, KeyError):
        pass
    return None


def _layer_size_of(disk: Path) -> int:
    return layer_size(disk.stat().st_size)


def _remember_layer(disk: Path, digest: str, size: int) -> None:
    stat = disk.stat()
    _cache_path(disk).write_text(json.dumps(
        {"disk_size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "digest": digest, "size": size}))


async def _hashed_blocks(disk: Path, hasher: hashlib._Hash, total: int,
                         progress: ProgressCallback) -> AsyncIterator[bytes]:
    blocks = iter_layer(disk)

    def read_next() -> bytes:
        block = next(blocks, _SENTINEL)
        hasher.update(block)  # hashlib drops the GIL for large blocks
        return block

    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, read_next)
    sent = 0
    while True:
        block = await pending
        if block is _SENTINEL or not block:
            return
        pending = loop.run_in_executor(None, read_next)  # read ahead while this block is sent
        sent += len(block)
        progress(Progress("build", sent, total, "streaming layer"))
        yield block


class DaemonlessBuilder:
    def __init__(self, credentials: Credentials | None, *, insecure: bool = False,
                 architecture: str = "amd64", annotations: dict[str, str] | None = None) -> None:
        self.credentials = credentials
        self.insecure = insecure
        self.architecture = architecture
        self.annotations = annotations

    def _client(self, target: ImageRef) -> RegistryClient:
        return RegistryClient(target.registry, target.repository, self.credentials, insecure=self.insecure)

    async def build(self, disk: Path, target: ImageRef, progress: ProgressCallback = ignore) -> BuiltImage:
        size = _layer_size_of(disk)
        async with self._client(target) as client:
            cached = _cached_layer(disk)
            if cached and await client.blob_exists(cached[0]):
                layer_digest = cached[0]
                progress(Progress("build", size, size, "layer already in the registry"))
            else:
                hasher = hashlib.sha256()
                layer_digest = await client.upload_stream(_hashed_blocks(disk, hasher, size, progress), size, hasher)
                _remember_layer(disk, layer_digest, size)
            config = image_config(layer_digest, self.architecture)
            config_digest = await client.upload_bytes(config)
        manifest = image_manifest(config, config_digest, layer_digest, size, self.annotations)
        return BuiltImage("daemonless", str(target), layer_digest, size, manifest=manifest.decode())

    async def push(self, built: BuiltImage, progress: ProgressCallback = ignore) -> PushedImage:
        target = ImageRef.parse(built.target)
        assert built.manifest is not None and target.tag is not None
        async with self._client(target) as client:
            digest = await client.put_manifest(target.tag, built.manifest.encode())
        progress(Progress("push", 1, 1, "manifest"))
        return PushedImage(str(target.with_digest(digest)), str(target), digest, built.layer_digest)
