"""The golden-image builder VM: manifest (pure), state reading (pure), create / read / delete.

The builder boots from the class's base containerDisk imported into a DataVolume (so its disk is a
PVC that can be exported), runs the recipe's install script through cloud-init, cleans the
per-machine state (cloud-init instance, machine-id: every lab node must get its own) and powers
off. `runStrategy: Once` keeps it off afterwards. If the script fails the VM stays up (no power
off), so the wait runs into its timeout with a message saying where to look; it is deleted anyway.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import yaml

from labs.models import NodeClass

KUBEVIRT_GROUP = "kubevirt.io"
KUBEVIRT_VERSION = "v1"
BUILDER_LABELS = {"app.kubernetes.io/managed-by": "labrador", "app.kubernetes.io/component": "image-builder"}
INSTALL_PATH = "/usr/local/sbin/labrador-install.sh"
# VM printableStatus values that will not resolve by waiting.
ERROR_STATES = frozenset({
    "ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "ErrorUnschedulable", "ErrorPvcNotFound",
    "ErrorDataVolumeNotFound", "DataVolumeError", "Unknown",
})
BuilderPhase = Literal["Missing", "Pending", "Running", "PoweredOff", "Failed"]


def disk_name(builder_name: str) -> str:
    return f"{builder_name}-disk"


def cloud_init_user_data(install_script: str) -> str:
    finish = (f"set -e; {INSTALL_PATH}; cloud-init clean --logs --machine-id || "
              "{ truncate -s0 /etc/machine-id; rm -rf /var/lib/cloud/instances; }; sync; poweroff")
    config = {
        "write_files": [{
            "path": INSTALL_PATH, "permissions": "0755", "encoding": "b64",
            "content": base64.b64encode(install_script.encode()).decode(),
        }],
        "runcmd": [["bash", "-c", finish]],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False)


def builder_vm_manifest(name: str, namespace: str, node_class: NodeClass, *, cpu_cores: int = 2,
                        memory: str = "2Gi", storage_class: str | None = None) -> dict[str, Any]:
    if node_class.build is None:
        raise ValueError(f"node class {node_class.name!r} has no build recipe")
    recipe = node_class.build
    storage: dict[str, Any] = {"resources": {"requests": {"storage": recipe.disk_size}}}
    if storage_class:
        storage["storageClassName"] = storage_class
    labels = {**BUILDER_LABELS, "labrador.io/node-class": node_class.name}
    return {
        "apiVersion": f"{KUBEVIRT_GROUP}/{KUBEVIRT_VERSION}",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runStrategy": "Once",  # Always would boot it again after it powers off
            "dataVolumeTemplates": [{
                "metadata": {"name": disk_name(name), "labels": dict(BUILDER_LABELS)},
                "spec": {"source": {"registry": {"url": f"docker://{recipe.base_image}"}}, "storage": storage},
            }],
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "domain": {
                        "cpu": {"cores": cpu_cores},
                        "memory": {"guest": memory},
                        "devices": {
                            "disks": [
                                {"name": "disk", "disk": {"bus": "virtio"}},
                                {"name": "cloudinit", "disk": {"bus": "virtio"}},
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {"name": "disk", "dataVolume": {"name": disk_name(name)}},
                        {"name": "cloudinit", "cloudInitNoCloud": {
                            "userData": cloud_init_user_data(recipe.install_script)}},
                    ],
                },
            },
        },
    }


def builder_phase(vm: dict[str, Any] | None, vmi: dict[str, Any] | None,
                  seen_running: bool) -> tuple[BuilderPhase, str]:
    """Where the builder is. `seen_running` is remembered by the caller (heartbeat details): a VM
    that is Stopped without having run has not started yet, one that ran has powered off."""
    if vm is None:
        return "Missing", "the builder VM does not exist"
    printable = (vm.get("status") or {}).get("printableStatus", "")
    vmi_phase = ((vmi or {}).get("status") or {}).get("phase", "")
    if printable in ERROR_STATES:
        return "Failed", f"builder VM is {printable}"
    if vmi_phase == "Succeeded":
        return "PoweredOff", "the builder powered off"
    if vmi_phase == "Failed":
        return "Failed", "the builder VM instance failed"
    if printable in ("Stopped", "Succeeded") and seen_running:
        return "PoweredOff", "the builder powered off"
    if vmi_phase == "Running" or printable == "Running":
        return "Running", "installing"
    return "Pending", printable or vmi_phase or "scheduling"


class BuilderClient:
    """Create, read and delete builder VMs through the official client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.custom: Any = client.CustomObjectsApi(api_client)  # dict bodies, as the API takes them

    def _get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client import ApiException

        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                KUBEVIRT_GROUP, KUBEVIRT_VERSION, namespace, plural, name)
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client import ApiException

        try:
            self.custom.create_namespaced_custom_object(
                KUBEVIRT_GROUP, KUBEVIRT_VERSION, manifest["metadata"]["namespace"], "virtualmachines", manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def observe(self, namespace: str, name: str, seen_running: bool) -> tuple[BuilderPhase, str]:
        vm = self._get("virtualmachines", namespace, name)
        vmi = self._get("virtualmachineinstances", namespace, name) if vm is not None else None
        return builder_phase(vm, vmi, seen_running)

    def delete(self, namespace: str, name: str) -> None:
        """Delete the VM; its DataVolume (owned through dataVolumeTemplates) goes with it."""
        from kubernetes.client import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                KUBEVIRT_GROUP, KUBEVIRT_VERSION, namespace, "virtualmachines", name,
                body={"propagationPolicy": "Background"})
        except ApiException as exc:
            if exc.status != 404:
                raise
