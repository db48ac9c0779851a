"""The published-images store: which containerDisk image each node class runs now.

The image pipeline publishes a new digest per node class; every reader (session start, pool
refill, `labrador image list`) asks this store. The effective image of a class is the published
reference when present, else the catalog's base image. One key per node class.
Backends: a JSON file in the data directory (simulated mode, here) and a ConfigMap in the worker's
namespace (kubevirt mode, `cluster.kubevirt.published_images`). Which one a process uses is the
shell's choice (`labrador.published_images.published_images_store`); activities get the store
injected.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from labs.models import NodeClass


class PublishedImage(BaseModel):
    node_class: str
    reference: str  # repository@sha256:... (pinned by digest)
    tag: str | None = None
    digest: str
    published_at: datetime


class PublishedImages(Protocol):
    def all(self) -> dict[str, PublishedImage]: ...

    def publish(self, image: PublishedImage) -> None: ...


class JsonFilePublishedImages:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> JsonFilePublishedImages:
        return cls(data_dir / "published-images.json")

    def all(self) -> dict[str, PublishedImage]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return {name: PublishedImage.model_validate(item) for name, item in raw.items()}

    def publish(self, image: PublishedImage) -> None:
        current = {k: v.model_dump(mode="json") for k, v in self.all().items()}
        current[image.node_class] = image.model_dump(mode="json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".published-images.")
        with os.fdopen(fd, "w") as handle:
            json.dump(current, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)


class MountedPublishedImages:
    """Read-only: the published-images ConfigMap mounted as a volume (one file per node class), for
    processes without Kubernetes access (the HTTP API). The kubelet refreshes the files within about a
    minute of a publish."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def all(self) -> dict[str, PublishedImage]:
        found: dict[str, PublishedImage] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # the kubelet's ..data links and timestamped dirs
            found[path.name] = PublishedImage.model_validate_json(path.read_text())
        return found

    def publish(self, image: PublishedImage) -> None:
        raise PermissionError(f"published images in {self.directory} are a read-only mount; publish from the worker")


def effective_image(node_class: NodeClass, published: dict[str, PublishedImage]) -> str:
    image = published.get(node_class.name)
    return image.reference if image else node_class.image


def with_effective_images(
    classes: dict[str, NodeClass], published: dict[str, PublishedImage]
) -> dict[str, NodeClass]:
    """Copies of the classes whose `image` is the effective image (what a workflow input carries)."""
    return {
        name: cls.model_copy(update={"image": effective_image(cls, published)}) for name, cls in classes.items()
    }


def now() -> datetime:
    return datetime.now(UTC)
