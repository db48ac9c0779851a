"""Pydantic models of the lab catalog. Pure: workflows import these.

The loader (`labs.loader`) turns YAML files into these models with located errors; the JSON Schema
committed as `labs/lab.schema.json` is generated from `LabFile` and `NodeClassesFile`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]

_DURATION_RE = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")
# Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity, decimal and binary suffixes).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_FACTORS = {
    "": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_duration(value: Any) -> Any:
    """Accept '1h', '90m', '1h30m', '45s' or a number of seconds; leave other types to pydantic."""
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if value.strip() and match and any(match.groups()):
            return timedelta(
                hours=int(match["h"] or 0), minutes=int(match["m"] or 0), seconds=int(match["s"] or 0)
            )
        if not value.strip().upper().startswith("P"):
            raise ValueError(f"{value!r} is not a duration like '1h', '90m' or '1h30m'")
    return value


def format_duration(value: timedelta) -> str:
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return text or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "pattern": _DURATION_RE.pattern}),
]


def quantity_bytes(quantity: str) -> int:
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$", quantity)
    if not match or match.group(2) not in _QUANTITY_FACTORS:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    CONTROLPLANE = "controlplane"
    WORKER = "worker"


DEFAULT_MEMORY = {Role.CONTROLPLANE: "1536Mi", Role.WORKER: "1126Mi"}


class PvcRef(Strict):
    namespace: DnsLabel
    name: DnsLabel


class ContainerDiskSource(Strict):
    type: Literal["containerDisk"] = "containerDisk"


class PvcCloneSource(Strict):
    type: Literal["pvcClone"] = "pvcClone"
    pvc: PvcRef = Field(description="the golden PVC that CDI clones for every node of this class")
    size: Annotated[str, Field(pattern=QUANTITY_PATTERN)] = "10Gi"


DiskSource = Annotated[ContainerDiskSource | PvcCloneSource, Field(discriminator="type")]


class BuildRecipe(Strict):
    base_image: str = Field(description="containerDisk image the builder VM boots from (pinned)")
    install_script: str = Field(description="shell script run by cloud-init in the builder VM")
    disk_size: Annotated[str, Field(pattern=QUANTITY_PATTERN)] = "12Gi"
    schedule: str | None = Field(default=None, description="cron expression for rebuilds (default weekly)")


class NodeClass(Strict):
    name: DnsLabel
    role: Role
    image: str = Field(description="containerDisk image pinned by tag or digest (the base image)")
    kubernetes_version: Annotated[str, Field(pattern=r"^1\.[0-9]+\.[0-9]+$")]
    cpu_cores: Annotated[int, Field(ge=1, le=16)] = 1
    memory: Annotated[str, Field(pattern=QUANTITY_PATTERN)] | None = None
    disk: DiskSource = Field(default_factory=ContainerDiskSource)
    build: BuildRecipe | None = None

    @property
    def effective_memory(self) -> str:
        return self.memory or DEFAULT_MEMORY[self.role]

    @property
    def memory_bytes(self) -> int:
        return quantity_bytes(self.effective_memory)


class Taint(Strict):
    key: str
    value: str = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class LabNode(Strict):
    name: DnsLabel = Field(description="stable node name inside the lab: controlplane, node01, ...")
    role: Role
    node_class: DnsLabel = Field(alias="class")
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Script(Strict):
    name: DnsLabel
    node: DnsLabel | None = Field(default=None, description="run on this lab node")
    role: Literal["controlplane", "workers", "all"] | None = Field(
        default=None, description="or on every node of a role"
    )
    run: str
    timeout: Duration = timedelta(minutes=5)


class Scripts(Strict):
    setup: list[Script] = Field(default_factory=list)
    teardown: list[Script] = Field(default_factory=list)


class Expect(Strict):
    exit_code: int | None = 0
    stdout: str | None = Field(default=None, description="Python regular expression searched in stdout")

    @field_validator("stdout")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return value


class Check(Strict):
    name: DnsLabel
    description: str = ""
    node: DnsLabel = "controlplane"
    run: str
    expect: Expect = Field(default_factory=Expect)
    timeout: Duration = timedelta(seconds=60)
    points: Annotated[int, Field(ge=0)] = 1


class Lab(Strict):
    name: DnsLabel
    title: str
    description: str = ""
    kind: Literal["lab", "sandbox"] = "lab"
    duration: Duration | None = Field(default=None, description="default 1h for labs, 2h for sandboxes")
    max_extensions: Annotated[int, Field(ge=0)] = 2
    extension: Duration = timedelta(minutes=15)
    bootstrap: Literal["kubeadm-join", "none"] = Field(
        default="kubeadm-join", description="standard join of the workers to the control plane"
    )
    nodes: list[LabNode]
    scripts: Scripts = Field(default_factory=Scripts)
    checks: list[Check] = Field(default_factory=list)

    @property
    def effective_duration(self) -> timedelta:
        if self.duration is not None:
            return self.duration
        return timedelta(hours=2) if self.kind == "sandbox" else timedelta(hours=1)

    @property
    def controlplane(self) -> LabNode:
        return next(n for n in self.nodes if n.role == Role.CONTROLPLANE)

    @property
    def workers(self) -> list[LabNode]:
        return [n for n in self.nodes if n.role == Role.WORKER]


class Catalog(Strict):
    labs: dict[str, Lab]
    node_classes: dict[str, NodeClass]

    def lab(self, name: str) -> Lab:
        try:
            return self.labs[name]
        except KeyError:
            raise KeyError(f"lab: {name!r} is not in the catalog") from None
