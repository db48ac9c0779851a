"""Fault injection for the simulated cluster: a seedable plan, decided per node or per call.

Per-node decisions (boot failure, node death) hash the seed with the node ID, so they do not depend
on call order and a restarted worker with the same plan sees the same faults. API errors draw from one
seeded random stream per backend instance.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


def one_line(exc: ValidationError) -> str:
    """The first validation error as 'field: message (got value)'."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"{where}: {err['msg']} (got {err.get('input')!r})"


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BootFailure(_Strict):
    """Nodes that never boot: FAILED with `reason` once the boot latency has passed."""

    rate: float = Field(1.0, ge=0.0, le=1.0, description="fraction of matching nodes that fail")
    nodes: str = Field(".*", description="regex searched in the node ID")
    node_class: str | None = Field(None, description="regex matched against the whole node class")
    reason: str = "VMI failed to boot (simulated boot failure)"

    _check = field_validator("nodes", "node_class")(_regex)


class ImagePullError(_Strict):
    """Nodes whose image matches `images` go FAILED with an ErrImagePull reason."""

    images: str = Field(description="regex searched in the full image reference")

    _check = field_validator("images")(_regex)


class NodeDeath(_Strict):
    """A claimed node stops being ready `after_seconds` into its session (counted from the later of
    ready and claim), and recovers `recover_after_seconds` later (never when None)."""

    after_seconds: float = Field(ge=0.0)
    recover_after_seconds: float | None = Field(None, ge=0.0)
    rate: float = Field(1.0, ge=0.0, le=1.0)
    nodes: str = Field(".*", description="regex searched in the node ID")
    reason: str = "node stopped responding (simulated node death)"

    _check = field_validator("nodes")(_regex)


class FaultPlan(_Strict):
    """Everything that can go wrong in the simulated cluster. The empty plan injects nothing."""

    seed: int = 0
    boot_failures: list[BootFailure] = Field(default_factory=list)
    image_pull_errors: list[ImagePullError] = Field(default_factory=list)
    node_deaths: list[NodeDeath] = Field(default_factory=list)
    api_error_rate: float = Field(0.0, ge=0.0, le=1.0, description="fraction of port calls that raise")
    api_error_methods: list[str] | None = Field(
        None, description="port methods the API errors apply to (default: all)"
    )

    @classmethod
    def from_file(cls, path: Path) -> FaultPlan:
        """Load a YAML fault plan; errors name the file and the field."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"fault plan {path}: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"fault plan {path}: {one_line(exc)}") from None

    def _draw(self, kind: str, index: int, node_id: str) -> float:
        digest = hashlib.sha256(f"{self.seed}:{kind}:{index}:{node_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def image_pull_failure(self, image: str) -> str | None:
        """The ErrImagePull reason for this image, or None."""
        for rule in self.image_pull_errors:
            if re.search(rule.images, image):
                return f"ErrImagePull: failed to pull image {image!r}: manifest unknown (simulated image-pull error)"
        return None

    def boot_failure(self, node_id: str, node_class: str) -> str | None:
        """The reason this node never becomes ready, or None."""
        for index, fail in enumerate(self.boot_failures):
            if not re.search(fail.nodes, node_id):
                continue
            if fail.node_class is not None and not re.fullmatch(fail.node_class, node_class):
                continue
            if self._draw("boot", index, node_id) < fail.rate:
                return fail.reason
        return None

    def death(self, node_id: str) -> NodeDeath | None:
        for index, death in enumerate(self.node_deaths):
            if re.search(death.nodes, node_id) and self._draw("death", index, node_id) < death.rate:
                return death
        return None


class ApiErrors:
    """The seeded stream deciding which port calls fail."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._random = random.Random(plan.seed)

    def should_fail(self, method: str) -> bool:
        if self.plan.api_error_rate <= 0.0:
            return False
        if self.plan.api_error_methods is not None and method not in self.plan.api_error_methods:
            return False
        return self._random.random() < self.plan.api_error_rate
