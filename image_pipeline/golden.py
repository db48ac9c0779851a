"""Golden builds: boot a builder VM from the class's recipe, wait until it has powered off.

Two builders behind one small interface. The kubevirt one drives a real VirtualMachine
(cluster.kubevirt.builder). The simulated one stands in where no cluster exists (simulated mode,
tests): it walks the same phases on successive observations and leaves a small qcow2 behind, so a
scheduled rebuild runs end to end without KubeVirt.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from image_pipeline.errors import PermanentError, PipelineError
from labs.models import NodeClass


@dataclass(frozen=True)
class BuilderObservation:
    phase: str  # Missing | Pending | Running | PoweredOff | Failed
    reason: str = ""
    pvc: str | None = None  # kubevirt: the PVC holding the built disk
    disk_path: str | None = None  # simulated: the disk file it produced


class GoldenBuilder(Protocol):
    def start(self, name: str, namespace: str, node_class: NodeClass) -> None: ...

    def observe(self, name: str, namespace: str, seen_running: bool) -> BuilderObservation: ...

    def delete(self, name: str, namespace: str) -> None: ...


class KubeVirtGoldenBuilder:
    def __init__(self, api_client: Any) -> None:
        from cluster.kubevirt.builder import BuilderClient

        self.client = BuilderClient(api_client)

    def start(self, name: str, namespace: str, node_class: NodeClass) -> None:
        from cluster.kubevirt.builder import builder_vm_manifest

        self.client.create(builder_vm_manifest(name, namespace, node_class))

    def observe(self, name: str, namespace: str, seen_running: bool) -> BuilderObservation:
        from cluster.kubevirt.builder import disk_name

        phase, reason = self.client.observe(namespace, name, seen_running)
        return BuilderObservation(phase, reason, pvc=disk_name(name) if phase == "PoweredOff" else None)

    def delete(self, name: str, namespace: str) -> None:
        self.client.delete(namespace, name)


class SimulatedGoldenBuilder:
    """State in a JSON file per builder; each observation advances one phase after `steps` polls.

    `fail_classes` names node classes whose install "fails" (the VM errors instead of powering off).
    """

    PHASES = ("Pending", "Running", "PoweredOff")

    def __init__(self, root: Path, *, steps: int = 1, disk_size: str = "64M",
                 fail_classes: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.steps = steps
        self.disk_size = disk_size
        self.fail_classes = fail_classes

    def _state_path(self, name: str, namespace: str) -> Path:
        return self.root / f"{namespace}--{name}.json"

    def start(self, name: str, namespace: str, node_class: NodeClass) -> None:
        path = self._state_path(name, namespace)
        if path.exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"polls": 0, "node_class": node_class.name,
                                    "fail": node_class.name in self.fail_classes}))

    def observe(self, name: str, namespace: str, seen_running: bool) -> BuilderObservation:
        path = self._state_path(name, namespace)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return BuilderObservation("Missing", "the builder VM does not exist")
        state["polls"] += 1
        path.write_text(json.dumps(state))
        index = min(state["polls"] // self.steps, len(self.PHASES) - 1)
        phase = self.PHASES[index]
        if phase == "PoweredOff" and state["fail"]:
            return BuilderObservation("Failed", "builder VM is CrashLoopBackOff")
        if phase != "PoweredOff":
            return BuilderObservation(phase, "installing" if phase == "Running" else "scheduling")
        disk = self.root / f"{namespace}--{name}.qcow2"
        if not disk.exists():
            # An empty disk with a boot signature (0x55AA at 510): the pipeline only takes bootable disks.
            raw = disk.with_suffix(".raw")
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), self.disk_size], check=True)
            with raw.open("r+b") as handle:
                handle.seek(510)
                handle.write(b"\x55\xaa")
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
            raw.unlink()
        return BuilderObservation("PoweredOff", "the builder powered off", disk_path=str(disk))

    def delete(self, name: str, namespace: str) -> None:
        self._state_path(name, namespace).unlink(missing_ok=True)
        (self.root / f"{namespace}--{name}.qcow2").unlink(missing_ok=True)


async def wait_powered_off(
    builder: GoldenBuilder, name: str, namespace: str, *, limit: float, poll: float = 5,
    seen_running: bool = False, on_poll: Callable[[BuilderObservation, bool], None] = lambda *_: None,
) -> BuilderObservation:
    """Poll until the builder has powered off. `seen_running` comes back from heartbeat details on
    a retry, so a VM that already ran and stopped is recognised as finished, not as not-started."""
    deadline = time.monotonic() + limit
    while True:
        observation = await asyncio.to_thread(builder.observe, name, namespace, seen_running)
        seen_running = seen_running or observation.phase == "Running"
        on_poll(observation, seen_running)
        if observation.phase == "PoweredOff":
            return observation
        if observation.phase == "Failed":
            raise PermanentError(f"builder VM {namespace}/{name} failed: {observation.reason}")
        if observation.phase == "Missing":
            raise PipelineError(f"builder VM {namespace}/{name} is missing (deleted from outside?)")
        if time.monotonic() >= deadline:
            raise PermanentError(
                f"builder VM {namespace}/{name} did not power off within {limit:.0f}s (phase {observation.phase}); "
                "the install script probably failed: read the VM's serial console before it is deleted")
        await asyncio.sleep(poll)
