"""Pydantic models of the lab catalog. Pure: workflows import these.

Two shapes of a lab:
- `LabFile` is what authors write (worker groups with a `count`, names optional). The JSON Schema
  committed as `labs/lab.schema.json` is generated from it.
- `Lab` is what everything else uses: `nodes` is the expanded list (controlplane, node01, node02, ...),
  and its invariants (one control plane, unique names, checks and scripts naming real nodes) hold.

The loader (`labs.loader`) reads YAML files into these models and reports located errors
(FILE:LINE:COL: field.path: message); `LabFile.problems` holds the cross-field rules so that each
problem is reported at the field that causes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from labs.pool_sizing import PoolSizing

# --- scalar types -------------------------------------------------------------------------------

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def _dns_label(value: str) -> str:
    if not re.fullmatch(DNS_LABEL_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label), WithJsonSchema({"type": "string", "pattern": DNS_LABEL_PATTERN})]

# At most 6 digits per part: `99999…h` would overflow timedelta (an OverflowError, not a located error).
_DURATION_RE = re.compile(r"^(?:(?P<h>\d{1,6})h)?(?:(?P<m>\d{1,6})m)?(?:(?P<s>\d{1,7})s)?$")
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"


def parse_duration(value: Any) -> Any:
    """Accept '1h', '90m', '1h30m', '45s' or a number of seconds; leave other types to pydantic."""
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if value.strip() and match and any(match.groups()):
            return timedelta(hours=int(match["h"] or 0), minutes=int(match["m"] or 0), seconds=int(match["s"] or 0))
        if not value.strip().upper().startswith("P"):
            raise ValueError(f"{value!r} is not a duration like '1h', '90m' or '1h30m'")
    return value


def format_duration(value: timedelta) -> str:
    total = int(value.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return text or "0s"


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": DURATION_PATTERN, "minLength": 2},
        {"type": "integer", "minimum": 0, "description": "seconds"},
    ]
}

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(_DURATION_SCHEMA),
]


MAX_ANY_DURATION = timedelta(days=7)


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"{format_duration(value)!r} must be longer than zero")
    if value > MAX_ANY_DURATION:
        raise ValueError(f"{format_duration(value)!r} is longer than {format_duration(MAX_ANY_DURATION)}")
    return value


def _at_most(limit: timedelta, what: str) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if value > limit:
            raise ValueError(f"{format_duration(value)!r} is longer than the {format_duration(limit)} allowed {what}")
        return value

    return AfterValidator(check)


def _text(limit: int, what: str) -> AfterValidator:
    """A string limit whose message says the limit (a lab travels in several Temporal inputs)."""

    def check(value: str) -> str:
        size = len(value.encode("utf-8"))
        if size > limit:
            raise ValueError(
                f"{what} is {size:,} bytes; at most {limit:,} ({limit // 1024} KiB) are allowed"
                if limit >= 1024 else f"{what} is {size:,} bytes; at most {limit:,} are allowed"
            )
        return value

    return AfterValidator(check)


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]

# Kubernetes resource quantity (k8s.io/apimachinery resource.Quantity, decimal and binary suffixes).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY_FACTORS = {
    "": 1,
    "m": 0.001,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity_bytes(quantity: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", quantity)
    if not match or match.group(2) not in _QUANTITY_FACTORS:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity")
    return int(float(match.group(1)) * _QUANTITY_FACTORS[match.group(2)])


def _quantity(value: str) -> str:
    if not re.fullmatch(QUANTITY_PATTERN, value):
        raise ValueError(
            f"{value!r} is not a Kubernetes quantity (write e.g. 1536Mi or 2Gi; "
            "suffixes Ki Mi Gi Ti Pi Ei or k M G T P E)"
        )
    return value


Quantity = Annotated[str, AfterValidator(_quantity), WithJsonSchema({"type": "string", "pattern": QUANTITY_PATTERN})]

# An image reference that names a fixed version: a tag other than `latest`, or a sha256 digest.
# `:latest` or no tag makes KubeVirt use imagePullPolicy Always, and nodes of one class could differ.
_IMAGE_NAME_RE = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?/)?"  # registry host[:port]/
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_PINNED_IMAGE_SCHEMA = {
    "type": "string",
    "anyOf": [
        {"pattern": r"^[^\s@]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", "not": {"pattern": ":latest$"}},
        {"pattern": r"^[^\s@]+@sha256:[a-f0-9]{64}$"},
    ],
}


def _pinned_image(value: str) -> str:
    name, _, digest = value.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2] if ":" in last else None
    repository = name[: len(name) - len(tag) - 1] if tag is not None else name
    if not _IMAGE_NAME_RE.fullmatch(repository):
        raise ValueError(f"{value!r} is not an image reference like registry.example/path/name:tag")
    if digest and not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"{value!r} has a malformed digest (expected @sha256: and 64 hex digits)")
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise ValueError(f"{value!r} has a malformed tag {tag!r}")
    if tag == "latest" and not digest:
        raise ValueError(f"{value!r} is not pinned: ':latest' moves; use a version tag or an @sha256 digest")
    if tag is None and not digest:
        raise ValueError(f"{value!r} is not pinned: add a version tag or an @sha256 digest")
    return value


PinnedImage = Annotated[
    str,
    AfterValidator(_pinned_image),
    WithJsonSchema(_PINNED_IMAGE_SCHEMA),
]

# Kubernetes label keys ([prefix/]name) and values.
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_SUBDOMAIN = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)"
LABEL_KEY_PATTERN = rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME})?$"


def _label_key(value: str) -> str:
    prefix, _, name = value.rpartition("/")
    if not re.fullmatch(LABEL_KEY_PATTERN, value) or len(prefix) > 253 or len(name) > 63:
        raise ValueError(f"{value!r} is not a Kubernetes label key ([prefix/]name, name at most 63 characters)")
    return value


def _label_value(value: str) -> str:
    if not re.fullmatch(LABEL_VALUE_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes label value (at most 63 of A-Z a-z 0-9 - _ .)")
    return value


LabelKey = Annotated[str, AfterValidator(_label_key), WithJsonSchema({"type": "string", "pattern": LABEL_KEY_PATTERN})]
LabelValue = Annotated[
    str, AfterValidator(_label_value), WithJsonSchema({"type": "string", "pattern": LABEL_VALUE_PATTERN})
]


def _regex(value: str) -> str:
    from labs.check_regex import BadPattern, compile_pattern

    try:
        compile_pattern(value)
    except BadPattern as exc:
        raise ValueError(f"{value[:80]!r} {exc}") from None
    return value


# --- limits (docs/catalog.md "Limits"): a lab file comes from a stranger ---------------------------
MAX_LAB_NODES = 10
"""Nodes of one lab (Instruqt/iximiuz stop at 5 machines per playground)."""
MAX_SCRIPT_BYTES = 32 * 1024
MAX_CHECK_RUN_BYTES = 8 * 1024
MAX_TEXT_BYTES = 4 * 1024
MAX_SCRIPTS = 20
MAX_CHECKS = 50
MAX_LABELS = 32
MAX_TAINTS = 16
MAX_EXTENSIONS = 20
MAX_LAB_JSON_BYTES = 96 * 1024
"""A whole lab as JSON with the node classes it uses: it travels in several Temporal inputs (session
start, setup, checks), each of which must stay well under the 256 KiB payload rule."""
MAX_NODE_MEMORY = "64Gi"
MAX_NODE_CLASSES = 100
MAX_DISK = "2Ti"
MAX_SCRIPT_TIMEOUT = timedelta(hours=1)
MAX_CHECK_TIMEOUT = timedelta(minutes=10)


def _disk_size(value: str) -> str:
    if quantity_bytes(value) > quantity_bytes(MAX_DISK):
        raise ValueError(f"{value!r} is more than {MAX_DISK}, the largest disk a node class may ask for")
    return value


DiskSize = Annotated[Quantity, AfterValidator(_disk_size)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(StrEnum):
    CONTROLPLANE = "controlplane"
    WORKER = "worker"


DEFAULT_MEMORY = {Role.CONTROLPLANE: "1536Mi", Role.WORKER: "1126Mi"}
MIN_MEMORY = "512Mi"

# --- node classes -------------------------------------------------------------------------------


class PvcRef(Strict):
    namespace: DnsLabel
    name: DnsLabel


class ContainerDiskSource(Strict):
    type: Literal["containerDisk"] = "containerDisk"


class PvcCloneSource(Strict):
    type: Literal["pvcClone"] = "pvcClone"
    pvc: PvcRef = Field(description="the golden PVC that CDI clones for every node of this class")
    size: DiskSize = "10Gi"


DiskSource = Annotated[ContainerDiskSource | PvcCloneSource, Field(discriminator="type")]


def _cron(value: str | None) -> str | None:
    if value is not None and not (value.startswith("@") or len(value.split()) == 5):
        raise ValueError(f"{value!r} is not a cron expression (five fields, or @daily/@weekly)")
    return value


class BuildRecipe(Strict):
    base_image: PinnedImage = Field(description="containerDisk image the builder VM boots from (pinned)")
    install_script: Annotated[str, _text(MAX_SCRIPT_BYTES, "install_script")] = Field(
        description="shell script run by cloud-init in the builder VM")
    disk_size: DiskSize = "12Gi"
    schedule: Annotated[str | None, AfterValidator(_cron)] = Field(
        default=None, description="cron expression for rebuilds (default weekly)"
    )


KUBERNETES_VERSION_PATTERN = r"^1\.[0-9]+\.[0-9]+$"


def _kubernetes_version(value: str) -> str:
    if not re.fullmatch(KUBERNETES_VERSION_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes version like 1.31.4 (major.minor.patch, no 'v')")
    return value


KubernetesVersion = Annotated[
    str,
    AfterValidator(_kubernetes_version),
    WithJsonSchema({"type": "string", "pattern": KUBERNETES_VERSION_PATTERN}),
]


class NodeClass(Strict):
    name: DnsLabel
    description: str = ""
    role: Role
    image: PinnedImage = Field(description="containerDisk image pinned by tag or digest (the base image)")
    kubernetes_version: KubernetesVersion
    cpu_cores: Annotated[int, Field(ge=1, le=16)] = 1
    memory: Quantity | None = Field(default=None, description="default 1536Mi control plane, 1126Mi worker")
    disk: DiskSource = Field(default_factory=ContainerDiskSource)
    build: BuildRecipe | None = None
    pool: PoolSizing | None = Field(
        default=None, description="warm pool size: min, max, schedule of minimums (labs/pool_sizing.py)"
    )

    @field_validator("memory")
    @classmethod
    def _enough_memory(cls, value: str | None) -> str | None:
        if value is not None and quantity_bytes(value) < quantity_bytes(MIN_MEMORY):
            raise ValueError(f"{value!r} is less than {MIN_MEMORY}: kubeadm nodes do not boot in that")
        if value is not None and quantity_bytes(value) > quantity_bytes(MAX_NODE_MEMORY):
            raise ValueError(f"{value!r} is more than {MAX_NODE_MEMORY}, the most one lab node may have")
        return value

    @property
    def effective_memory(self) -> str:
        return self.memory or DEFAULT_MEMORY[self.role]

    @property
    def memory_bytes(self) -> int:
        return quantity_bytes(self.effective_memory)


class NodeClassesFile(Strict):
    """The file `node-classes.yaml` of a catalog directory."""

    node_classes: list[NodeClass] = Field(max_length=MAX_NODE_CLASSES)


# --- labs ---------------------------------------------------------------------------------------


class Taint(Strict):
    key: LabelKey
    value: LabelValue = ""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class LabNode(Strict):
    name: DnsLabel = Field(description="stable node name inside the lab: controlplane, node01, ...")
    role: Role
    node_class: DnsLabel = Field(alias="class")
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS)
    taints: list[Taint] = Field(default_factory=list, max_length=MAX_TAINTS)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _count(value: int) -> int:
    if value < 1:
        raise ValueError(f"count {value} is not a node count: write 1 or more (drop the group for no workers)")
    if value > MAX_LAB_NODES - 1:
        raise ValueError(f"count {value} is more than {MAX_LAB_NODES - 1} workers (a lab has at most "
                         f"{MAX_LAB_NODES} nodes)")
    return value


class NodeGroup(Strict):
    """One entry of a lab file's `nodes`: the control plane, one named worker or `count` workers."""

    name: DnsLabel | None = Field(
        default=None,
        description="stable name; default 'controlplane' for the control plane, node01..nodeNN for workers "
        "(numbered by position among the workers)",
    )
    role: Role
    node_class: DnsLabel = Field(alias="class", description="a node class of node-classes.yaml")
    count: Annotated[
        int, AfterValidator(_count), WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_LAB_NODES - 1})
    ] = Field(
        default=1, description="workers only: how many"
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAX_LABELS, description="Kubernetes node labels")
    taints: list[Taint] = Field(default_factory=list, max_length=MAX_TAINTS, description="Kubernetes node taints")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


ScriptRole = Literal["controlplane", "workers", "all"]


class Script(Strict):
    name: DnsLabel
    node: DnsLabel | None = Field(default=None, description="run on this lab node")
    role: ScriptRole | None = Field(
        default=None, description="or on every node of a role; neither node nor role: the control plane"
    )
    run: Annotated[str, _text(MAX_SCRIPT_BYTES, "the script")] = Field(
        description="shell script, run as root by bash -c on the node (start with set -euo pipefail); at most "
        "32 KiB: put big content in the node image")
    timeout: Annotated[PositiveDuration, _at_most(MAX_SCRIPT_TIMEOUT, "for a script")] = timedelta(minutes=5)


class Scripts(Strict):
    setup: list[Script] = Field(
        default_factory=list, max_length=MAX_SCRIPTS, description="before the student gets access, in order")
    teardown: list[Script] = Field(
        default_factory=list, max_length=MAX_SCRIPTS, description="before the nodes are deleted, in order")


class Expect(Strict):
    exit_code: int | None = 0
    stdout: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None,
        description="RE2 regular expression searched in stdout with one trailing newline removed "
        "(^ and $: start and end of that text; (?m) for lines)",
    )

    @model_validator(mode="after")
    def _expects_something(self) -> Expect:
        if self.exit_code is None and self.stdout is None:
            raise ValueError("expect needs an exit_code and/or a stdout regex, else the check always passes")
        return self


class Check(Strict):
    name: DnsLabel
    description: Annotated[str, _text(MAX_TEXT_BYTES, "the description")] = ""
    hint: Annotated[str, _text(MAX_TEXT_BYTES, "the hint")] = Field(
        default="", description="shown to the student when the check fails")
    node: DnsLabel = "controlplane"
    run: Annotated[str, _text(MAX_CHECK_RUN_BYTES, "the check command")]
    expect: Expect = Field(default_factory=Expect)
    timeout: Annotated[PositiveDuration, _at_most(MAX_CHECK_TIMEOUT, "for a check")] = timedelta(seconds=60)
    points: Annotated[int, Field(ge=0, le=1000)] = 1


class Problem(NamedTuple):
    """A cross-field rule broken at `path` (keys and list indices, as in the lab file)."""

    path: tuple[str | int, ...]
    message: str


def _reference_problems(
    nodes: list[tuple[tuple[str | int, ...], str, Role]], scripts: Scripts, checks: list[Check]
) -> list[Problem]:
    """Unique node/check/script names and references to nodes; `nodes` is (path, name, role)."""
    problems: list[Problem] = []
    seen: dict[str, tuple[str | int, ...]] = {}
    for path, name, _ in nodes:
        if name in seen:
            problems.append(Problem(path, f"duplicate node name {name!r} (also {format_path(seen[name])})"))
        else:
            seen[name] = path
    known = ", ".join(seen)
    has_workers = any(role == Role.WORKER for _, _, role in nodes)
    for section in ("setup", "teardown"):
        script_names: dict[str, int] = {}
        for i, script in enumerate(getattr(scripts, section)):
            path = ("scripts", section, i)
            if script.name in script_names:
                problems.append(
                    Problem(
                        (*path, "name"),
                        f"duplicate script name {script.name!r} (also scripts.{section}[{script_names[script.name]}])",
                    )
                )
            script_names.setdefault(script.name, i)
            if script.node is not None and script.role is not None:
                problems.append(
                    Problem((*path, "role"), f"set node ({script.node!r}) or role ({script.role!r}), not both")
                )
            elif script.node is not None and script.node not in seen:
                problems.append(Problem((*path, "node"), f"{script.node!r} is not a node of this lab (nodes: {known})"))
            elif script.role == "workers" and not has_workers:
                problems.append(Problem((*path, "role"), "'workers' but this lab has no worker nodes"))
    check_names: dict[str, int] = {}
    for i, check in enumerate(checks):
        if check.name in check_names:
            problems.append(
                Problem(
                    ("checks", i, "name"),
                    f"duplicate check name {check.name!r} (also checks[{check_names[check.name]}])",
                )
            )
        check_names.setdefault(check.name, i)
        if check.node not in seen:
            problems.append(
                Problem(("checks", i, "node"), f"{check.node!r} is not a node of this lab (nodes: {known})")
            )
    return problems


def format_path(path: tuple[str | int, ...]) -> str:
    """('nodes', 1, 'class') -> 'nodes[1].class'; keys that are not plain words are quoted."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text or "(root)"


class PauseRules(Strict):
    """How a student may stop the clock (lab `pause` / `resume`). Unset fields take the settings."""

    longest: PositiveDuration | None = Field(
        default=None, description="longest single pause; past it the lab ends with reason 'pause expired' "
        "(default: setting session_pause_longest, 30m)"
    )
    total: PositiveDuration | None = Field(
        default=None, description="paused time allowed in all (default: setting session_pause_total, 2h)"
    )
    max_pauses: Annotated[int, Field(ge=0, le=100)] | None = Field(
        default=None, description="how many pauses (0: no pausing; default: setting session_pause_max, 3)"
    )
    grade_when_expired: bool | None = Field(
        default=None, description="grade a lab whose pause expired (default: setting session_pause_expired_graded, "
        "false)"
    )


class ResetRules(Strict):
    """Fresh nodes of the same lab in the same session (lab `reset`). Unset fields take the settings."""

    max_resets: Annotated[int, Field(ge=0, le=100)] | None = Field(
        default=None, description="how many resets (0: no reset; default: setting session_reset_max, 1)"
    )
    restart_time: bool | None = Field(
        default=None, description="a reset gives the full duration again instead of keeping the time left "
        "(default: setting session_reset_restarts_time, false)"
    )


class _LabFields(Strict):
    name: DnsLabel
    title: Annotated[str, _text(256, "the title")]
    description: Annotated[str, _text(MAX_TEXT_BYTES, "the description")] = ""
    kind: Literal["lab", "sandbox"] = "lab"
    duration: PositiveDuration | None = Field(default=None, description="default 1h for labs, 2h for sandboxes")
    max_extensions: Annotated[int, Field(ge=0, le=MAX_EXTENSIONS)] = 2
    extension: PositiveDuration = Field(default=timedelta(minutes=15), description="length of one extension")
    bootstrap: Literal["kubeadm-join", "none"] = Field(
        default="kubeadm-join", description="standard join of the workers to the control plane"
    )
    scripts: Scripts = Field(default_factory=Scripts)
    checks: list[Check] = Field(default_factory=list, max_length=MAX_CHECKS)
    pause: PauseRules = Field(default_factory=PauseRules, description="limits of pausing the lab")
    reset: ResetRules = Field(default_factory=ResetRules, description="limits of resetting the lab to fresh nodes")

    @property
    def effective_duration(self) -> timedelta:
        if self.duration is not None:
            return self.duration
        return timedelta(hours=2) if self.kind == "sandbox" else timedelta(hours=1)


class LabFile(_LabFields):
    """A lab as written in a YAML file of the catalog."""

    nodes: list[NodeGroup] = Field(
        min_length=1, max_length=MAX_LAB_NODES, description="the control plane and the worker groups")

    def expanded(self) -> list[tuple[tuple[str | int, ...], LabNode]]:
        """The lab's nodes, each with the path of the entry that made it."""
        result: list[tuple[tuple[str | int, ...], LabNode]] = []
        worker_position = 0
        for i, group in enumerate(self.nodes):
            copies = 1 if group.role == Role.CONTROLPLANE or group.name else group.count
            for _ in range(copies):
                if group.role == Role.WORKER:
                    worker_position += 1
                name = group.name or (
                    "controlplane" if group.role == Role.CONTROLPLANE else f"node{worker_position:02d}"
                )
                path: tuple[str | int, ...] = ("nodes", i, "name") if group.name else ("nodes", i)
                # Not validated again: the group was (or, for the loader's lenient pass, is known not to matter).
                node = LabNode.model_construct(
                    name=name, role=group.role, node_class=group.node_class, labels=group.labels, taints=group.taints
                )
                result.append((path, node))
        return result

    def problems(
        self, node_classes: Mapping[str, Role | None] | None = None, max_duration: timedelta | None = None
    ) -> list[Problem]:
        """Cross-field rules. `node_classes` maps known class names to their role (None: unknown role)."""
        problems = self.structure_problems()
        if node_classes is not None:
            problems.extend(self.class_problems(node_classes))
        problems.extend(self.duration_problems(max_duration))
        return problems

    def structure_problems(self) -> list[Problem]:
        """One control plane, names and counts, references of checks and scripts to nodes."""
        problems: list[Problem] = []
        controlplanes = [i for i, g in enumerate(self.nodes) if g.role == Role.CONTROLPLANE]
        if not controlplanes:
            problems.append(
                Problem(("nodes",), "no control-plane node: a lab has exactly one node with role controlplane")
            )
        for i in controlplanes[1:]:
            problems.append(
                Problem(
                    ("nodes", i, "role"),
                    f"second control plane (the first is nodes[{controlplanes[0]}]): a lab has exactly one",
                )
            )
        for i, group in enumerate(self.nodes):
            if group.count != 1 and group.role == Role.CONTROLPLANE:
                problems.append(
                    Problem(("nodes", i, "count"), f"count {group.count} on the control plane: a lab has exactly one")
                )
            elif group.count != 1 and group.name:
                problems.append(
                    Problem(
                        ("nodes", i, "name"),
                        f"name {group.name!r} with count {group.count}: a name is for one "
                        "node; drop it to get node01..nodeNN",
                    )
                )
        total = sum(1 if g.role == Role.CONTROLPLANE or g.name else g.count for g in self.nodes)
        if total > MAX_LAB_NODES:
            problems.append(Problem(("nodes",), f"{total} nodes: a lab has at most {MAX_LAB_NODES}"))
        # A second control plane is reported above; its default name would also read as a duplicate.
        extra = {("nodes", i) for i in controlplanes[1:]}
        expanded = [(p, n) for p, n in self.expanded() if p[:2] not in extra]
        problems.extend(_reference_problems([(p, n.name, n.role) for p, n in expanded], self.scripts, self.checks))
        return problems

    def class_problems(self, node_classes: Mapping[str, Role | None]) -> list[Problem]:
        return [p for i, group in enumerate(self.nodes) for p in self._class_problems(i, group, node_classes)]

    def duration_problems(self, max_duration: timedelta | None) -> list[Problem]:
        if max_duration is None or self.effective_duration <= max_duration:
            return []
        where: tuple[str | int, ...] = ("duration",) if self.duration is not None else ("kind",)
        return [
            Problem(
                where,
                f"duration {format_duration(self.effective_duration)} is longer than the maximum "
                f"{format_duration(max_duration)} (setting max_lab_duration)",
            )
        ]

    @staticmethod
    def _class_problems(i: int, group: NodeGroup, node_classes: Mapping[str, Role | None]) -> list[Problem]:
        path = ("nodes", i, "class")
        if group.node_class not in node_classes:
            return [
                Problem(
                    path,
                    f"node class {group.node_class!r} does not exist in node-classes.yaml "
                    f"(known: {', '.join(sorted(node_classes))})",
                )
            ]
        role = node_classes[group.node_class]
        if role is not None and role != group.role:
            return [
                Problem(path, f"node class {group.node_class!r} is for role {role}, this node has role {group.role}")
            ]
        return []

    def capacity_problems(
        self, node_classes: Mapping[str, NodeClass], max_vms: int | None, max_memory_bytes: int | None
    ) -> list[Problem]:
        """A lab that could never start under the global cap (settings max_vms, max_memory)."""
        nodes = self.expanded()
        problems: list[Problem] = []
        if max_vms is not None and len(nodes) > max_vms:
            problems.append(Problem(("nodes",), f"{len(nodes)} nodes, more than the global cap of "
                                    f"{max_vms} lab VMs (setting max_vms)"))
        if max_memory_bytes is not None and all(n.node_class in node_classes for _, n in nodes):
            memory = sum(node_classes[n.node_class].memory_bytes for _, n in nodes)
            if memory > max_memory_bytes:
                problems.append(Problem(("nodes",), f"{memory / 2**30:.1f} GiB of node memory, more than the "
                                        f"global cap of {max_memory_bytes / 2**30:.1f} GiB (setting max_memory)"))
        return problems

    def to_lab(self) -> Lab:
        fields = {name: getattr(self, name) for name in _LabFields.model_fields}
        return Lab(**fields, nodes=[node for _, node in self.expanded()])


class Lab(_LabFields):
    """A lab with its nodes expanded (controlplane, node01, ...): what workflows and activities use."""

    nodes: list[LabNode] = Field(max_length=MAX_LAB_NODES)

    @model_validator(mode="after")
    def _consistent(self) -> Lab:
        controlplanes = [n.name for n in self.nodes if n.role == Role.CONTROLPLANE]
        problems = (
            [] if len(controlplanes) == 1 else [Problem(("nodes",), f"{len(controlplanes)} control planes, need 1")]
        )
        problems += _reference_problems(
            [(("nodes", i, "name"), n.name, n.role) for i, n in enumerate(self.nodes)], self.scripts, self.checks
        )
        if problems:
            raise ValueError("; ".join(f"{format_path(p.path)}: {p.message}" for p in problems))
        return self

    @property
    def controlplane(self) -> LabNode:
        return next(n for n in self.nodes if n.role == Role.CONTROLPLANE)

    @property
    def workers(self) -> list[LabNode]:
        return [n for n in self.nodes if n.role == Role.WORKER]

    @property
    def node_class_names(self) -> list[str]:
        return sorted({n.node_class for n in self.nodes})

    @property
    def total_points(self) -> int:
        return sum(c.points for c in self.checks)


class Catalog(Strict):
    labs: dict[str, Lab]
    node_classes: dict[str, NodeClass]

    def lab(self, name: str) -> Lab:
        try:
            return self.labs[name]
        except KeyError:
            raise KeyError(f"lab: {name!r} is not in the catalog") from None

    def classes_for(self, lab: Lab) -> dict[str, NodeClass]:
        """The node classes a lab uses (what a session's input carries)."""
        return {name: self.node_classes[name] for name in lab.node_class_names}
