"""The two containerDisk builders behind one interface: `build` then `push`.

- daemonless: `build` streams the layer and the config blob straight into the registry, `push`
  writes the manifest under the tag. No daemon, no temporary copy.
- docker: `build` is `FROM scratch` + `ADD --chown=107:107` on a daemon through the docker SDK, `push`
  is the daemon's push. For operators who already run a daemon.
"""

from __future__ import annotations

from image_pipeline.auth import Credentials
from image_pipeline.built_image import Builder, BuilderName, BuiltImage, PushedImage
from image_pipeline.daemonless import DaemonlessBuilder
from image_pipeline.docker_builder import DockerBuilder

__all__ = ["Builder", "BuilderName", "BuiltImage", "PushedImage", "make_builder"]


def make_builder(name: BuilderName, credentials: Credentials | None, *, insecure: bool = False,
                 docker_host: str | None = None) -> Builder:
    if name == "docker":
        return DockerBuilder(credentials, docker_host=docker_host)
    return DaemonlessBuilder(credentials, insecure=insecure)
