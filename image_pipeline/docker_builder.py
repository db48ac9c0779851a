"""The docker builder: `FROM scratch` + `ADD --chown=107:107` on a daemon, via the docker SDK.

The build context (Dockerfile + disk) is streamed to the daemon as a tar generated on the fly, so
even here no context copy is written. The daemon's legacy builder makes `disk/` 0755 and the file
0644 (KubeVirt accepts both); its push gzips the layer, which is what makes it slow on big disks.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image_pipeline.auth import Credentials
from image_pipeline.built_image import BuiltImage, PushedImage
from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress, ProgressCallback, ignore
from image_pipeline.reference import ImageRef

DOCKERFILE = b"FROM scratch\nADD --chown=107:107 disk.img /disk/\n"


def _context(disk: Path, chunk_size: int = 4 << 20) -> Iterator[bytes]:
    def header(name: str, size: int, mode: int = 0o644) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, mode
        return info.tobuf(format=tarfile.PAX_FORMAT)

    yield header("Dockerfile", len(DOCKERFILE)) + DOCKERFILE + b"\0" * (-len(DOCKERFILE) % 512)
    size = disk.stat().st_size
    yield header("disk.img", size)
    with disk.open("rb") as handle:
        while block := handle.read(chunk_size):
            yield block
    yield b"\0" * (-size % 512) + b"\0" * 1024


def _client(docker_host: str | None) -> Any:
    import docker
    import docker.errors

    try:
        client = docker.APIClient(base_url=docker_host, timeout=600) if docker_host else docker.APIClient(
            timeout=600)
        client.ping()
        return client
    except docker.errors.DockerException as exc:
        raise PipelineError(f"docker daemon unreachable ({docker_host or 'default'}): {exc}") from exc


class DockerBuilder:
    def __init__(self, credentials: Credentials | None, *, docker_host: str | None = None) -> None:
        self.credentials = credentials
        self.docker_host = docker_host

    def _build(self, disk: Path, target: ImageRef, progress: ProgressCallback) -> BuiltImage:
        client = _client(self.docker_host)
        image_id = None
        try:
            for event in client.build(fileobj=_context(disk), custom_context=True, tag=str(target), rm=True,
                                      forcerm=True, decode=True):
                if "error" in event:
                    raise PermanentError(f"docker build: {event['error'].strip()}")
                if "aux" in event and "ID" in event["aux"]:
                    image_id = event["aux"]["ID"]
                if "stream" in event and event["stream"].strip():
                    progress(Progress("build", 0, None, event["stream"].strip()[:80]))
        finally:
            client.close()
        if image_id is None:
            raise PipelineError("docker build ended without an image ID")
        return BuiltImage("docker", str(target), image_id=image_id)

    def _push(self, built: BuiltImage, progress: ProgressCallback) -> PushedImage:
        target = ImageRef.parse(built.target)
        client = _client(self.docker_host)
        digest = None
        layers: dict[str, tuple[int, int]] = {}
        try:
            for event in client.push(target.name, tag=target.tag, stream=True, decode=True,
                                     auth_config=self.credentials.docker_auth_config() if self.credentials else None):
                if "error" in event:
                    message = event["error"].strip()
                    if "unauthorized" in message or "denied" in message:
                        raise PermanentError(f"docker push refused: {message}")
                    raise PipelineError(f"docker push: {message}")
                detail = event.get("progressDetail") or {}
                if event.get("id") and detail.get("total"):
                    layers[event["id"]] = (detail.get("current", 0), detail["total"])
                    progress(Progress("push", sum(c for c, _ in layers.values()), sum(t for _, t in layers.values())))
                if "aux" in event and "Digest" in event["aux"]:
                    digest = event["aux"]["Digest"]
        finally:
            client.close()
        if digest is None:
            raise PipelineError("docker push ended without a digest")
        return PushedImage(str(target.with_digest(digest)), str(target), digest)

    async def build(self, disk: Path, target: ImageRef, progress: ProgressCallback = ignore) -> BuiltImage:
        return await asyncio.to_thread(self._build, disk, target, progress)

    async def push(self, built: BuiltImage, progress: ProgressCallback = ignore) -> PushedImage:
        return await asyncio.to_thread(self._push, built, progress)

    def remove_local(self, built: BuiltImage) -> None:
        """Drop the local image: the registry holds it now, the daemon's disk should not."""
        import docker.errors

        client = _client(self.docker_host)
        try:
            client.remove_image(built.image_id or built.target, force=True)
        except docker.errors.NotFound:
            pass
        finally:
            client.close()


