"""The two containerDisk builders behind one interface: `build` then `push`.

- daemonless: `build` streams the layer and the config blob straight into the registry, `push`
  writes the manifest under the tag. No daemon, no temporary copy.
- docker: `build` is `FROM scratch` + `ADD --chown=107:107` on a daemon through the docker SDK, `push`
  is the daemon's push. For operators who already run a daemon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from image_pipeline.auth import Credentials
from image_pipeline.progress import ProgressCallback, ignore
from image_pipeline.reference import ImageRef

BuilderName = Literal["daemonless", "docker"]


@dataclass(frozen=True)
class BuiltImage:
    builder: str
    target: str  # registry/repository:tag
    layer_digest: str | None = None
    layer_size: int | None = None
    manifest: str | None = None  # daemonless: the manifest to put under the tag
    image_id: str | None = None  # docker: the local image


@dataclass(frozen=True)
class PushedImage:
    reference: str  # registry/repository@sha256:...
    tagged: str  # registry/repository:tag
    digest: str
    layer_digest: str | None = None


class Builder(Protocol):
    async def build(self, disk: Path, target: ImageRef, progress: ProgressCallback = ignore) -> BuiltImage: ...

    async def push(self, built: BuiltImage, progress: ProgressCallback = ignore) -> PushedImage: ...


def make_builder(name: BuilderName, credentials: Credentials | None, *, insecure: bool = False,
                 docker_host: str | None = None) -> Builder:
    if name == "docker":
        from image_pipeline.docker_builder import DockerBuilder

        return DockerBuilder(credentials, docker_host=docker_host)
    from image_pipeline.daemonless import DaemonlessBuilder

    return DaemonlessBuilder(credentials, insecure=insecure)
