"""Image references and the tag scheme `<node-class>-<kubernetes-version>-<yyyymmdd>`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import date

from image_pipeline.errors import PermanentError

_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


def image_tag(node_class: str, kubernetes_version: str, day: date) -> str:
    tag = f"{node_class}-{kubernetes_version}-{day:%Y%m%d}"
    if not _TAG_RE.fullmatch(tag):
        raise PermanentError(f"tag {tag!r} is not a valid image tag")
    return tag


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port]
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not _REPO_RE.fullmatch(self.repository):
            raise PermanentError(f"repository {self.repository!r} is not a valid repository name")
        if self.tag is not None and not _TAG_RE.fullmatch(self.tag):
            raise PermanentError(f"tag {self.tag!r} is not a valid image tag")

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}" if self.tag else self.name

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, None, digest)

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        rest, _, digest_text = text.partition("@")
        digest = digest_text or None
        if "/" not in rest:
            raise PermanentError(f"image reference {text!r} must name a registry host: host[:port]/repository[:tag]")
        registry, path = rest.split("/", 1)
        tag = None
        if ":" in path:
            path, tag = path.rsplit(":", 1)
        return cls(registry, path, tag, digest)
