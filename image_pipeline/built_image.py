"""What a containerDisk builder returns and the interface both builders implement.

Apart from `image_pipeline.builders` (which picks one) so the builders import these types without
importing the module that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

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
