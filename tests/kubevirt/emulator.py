"""kmock's KubernetesEmulator, completed where the kubevirt backend needs real API semantics.

kmock 0.8 cannot parse `/api/v1/namespaces[/name]` (POST fails with a 500 in its path parser,
GET/PATCH/DELETE are read as "namespace <name>" of no resource), stores objects without
resourceVersion, and ignores preconditions. This subclass:
- serves Namespaces itself (create/get/list/patch/delete, the delete cascading to the objects
  of the namespace, as the namespace controller does), stored in `objects` like the rest;
- gives every created/patched object a resourceVersion (and uid, creationTimestamp), refuses a
  patch whose metadata.resourceVersion is stale with 409, and refuses creating in a missing
  namespace with 404;
- allocates a nodePort for NodePort Services, as the API server does;
- lets a test inject an HTTP error on the next N requests matching a method and a path regex;
- serves KubeVirt's `subresources.kubevirt.io/v1` pause/unpause of a VMI as virt-api does (409 when
  already paused / not paused / not running, 404 without a VMI), setting the Paused condition.
Label selectors stay ignored (like kmock): the backend re-checks labels itself.

`VirtController` plays virt-controller/CDI: it writes VM, VMI and DataVolume status.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import dicts as kdicts
from kmock._internal.k8s import KubernetesError

NAMESPACES = kmock.resource("", "v1", "namespaces")
VMS = kmock.resource("kubevirt.io", "v1", "virtualmachines")
VMIS = kmock.resource("kubevirt.io", "v1", "virtualmachineinstances")
DVS = kmock.resource("cdi.kubevirt.io", "v1beta1", "datavolumes")
PVCS = kmock.resource("", "v1", "persistentvolumeclaims")
SERVICES = kmock.resource("", "v1", "services")
POLICIES = kmock.resource("networking.k8s.io", "v1", "networkpolicies")
SECRETS = kmock.resource("", "v1", "secrets")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
DECLARED = [VMS, VMIS, DVS, PVCS, SERVICES, POLICIES, SECRETS, CONFIGMAPS]

_NS_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_PAUSE_PATH = re.compile(
    r"^/apis/subresources\.kubevirt\.io/v1/namespaces/(?P<ns>[^/]+)/virtualmachineinstances/(?P<name>[^/]+)"
    r"/(?P<action>pause|unpause)$"
)


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int
    message: str
    hits: list[str] = field(default_factory=list)


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
         "reason": reason, "message": message},
        status=code,
    )


@attrs.define(kw_only=True)
class LabEmulator(kmock.KubernetesEmulator):
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _node_ports: itertools.count[int] = attrs.field(factory=lambda: itertools.count(30000), init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    subresource_calls: list[tuple[str, str, str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in DECLARED:
            self.resources[resource] = {}

    # --- test controls ------------------------------------------------------------------------
    def inject(self, method: str, path: str, status: int, *, times: int = 1, message: str = "injected") -> Fault:
        fault = Fault(method.upper(), re.compile(path), status, times, message)
        self.faults.append(fault)
        return fault

    def live(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def live_keys(self, resource: Any | None = None) -> list[tuple[Any, str | None, str]]:
        return [key for key, obj in self.objects.items()
                if not obj.deleted and (resource is None or key[0] == resource)]

    def _stamp(self, meta: dict[str, Any]) -> None:
        meta["resourceVersion"] = str(next(self._versions))

    # --- request handling ---------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        for fault in self.faults:
            if fault.remaining > 0 and fault.method == raw_request.method and fault.path.search(raw_request.path):
                fault.remaining -= 1
                fault.hits.append(raw_request.path)
                return _status(fault.status, "Injected", fault.message)
        match = _NS_PATH.match(raw_request.path)
        if match:
            try:
                data = await raw_request.json() if raw_request.can_read_body or raw_request.body_exists else None
            except ValueError:
                data = None
            return self._namespaces(raw_request.method, match.group("name"), data)
        match = _PAUSE_PATH.match(raw_request.path)
        if match:
            return self._pause(raw_request.method, match.group("ns"), match.group("name"), match.group("action"))
        return await super().__call__(raw_request)

    def _pause(self, method: str, namespace: str, name: str, action: str) -> aiohttp.web.StreamResponse:
        """virt-api's PauseVMIRequestHandler / UnpauseVMIRequestHandler, with virt-handler's effect."""
        self.subresource_calls.append((method, namespace, name, action))
        if method != "PUT":
            return _status(405, "MethodNotAllowed", method)
        vmi = self.live(VMIS, namespace, name)
        if vmi is None:
            return _status(404, "NotFound", f'virtualmachineinstance.kubevirt.io "{name}" not found')
        status = vmi.setdefault("status", {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Paused"]
        paused = any(c.get("type") == "Paused" and c.get("status") == "True" for c in status.get("conditions") or [])
        running = status.get("phase") == "Running"
        if action == "pause":
            if not running:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io '
                                                f'"{name}": VM is not running')
            if paused:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io '
                                                f'"{name}": VMI is already paused')
            conditions.append({"type": "Paused", "status": "True", "reason": "PausedByUser"})
        else:
            if not running or not paused:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io '
                                                f'"{name}": VMI is not paused')
        # The pod's readiness gate (virtual-machine-unpaused) makes the VMI not Ready while paused.
        for condition in conditions:
            if condition.get("type") == "Ready":
                condition["status"] = "False" if action == "pause" else "True"
        status["conditions"] = conditions
        self.objects[VMIS, namespace, name]["status"] = status
        return aiohttp.web.Response(status=200)

    def _namespaces(self, method: str, name: str | None, data: Any) -> aiohttp.web.StreamResponse:
        if name is None and method == "GET":
            items = [obj.raw for (res, _, _), obj in self.objects.items() if res == NAMESPACES and not obj.deleted]
            return aiohttp.web.json_response({"kind": "NamespaceList", "apiVersion": "v1",
                                              "metadata": {"resourceVersion": "1"}, "items": items})
        if name is None and method == "POST":
            name = str((data or {}).get("metadata", {}).get("name") or "")
            if not name:
                return _status(422, "Invalid", "metadata.name: Required value")
            if self.live(NAMESPACES, None, name) is not None:
                return _status(409, "AlreadyExists", f'namespaces "{name}" already exists')
            obj = dict(data)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj["status"] = {"phase": "Active"}
            self._stamp(meta)
            key = (NAMESPACES, None, name)
            if key in self.objects:
                self.objects[key].create(obj)
            else:
                self.objects[key] = obj
            return aiohttp.web.json_response(obj, status=201)
        assert name is not None
        current = self.live(NAMESPACES, None, name)
        if current is None:
            return _status(404, "NotFound", f'namespaces "{name}" not found')
        if method == "GET":
            return aiohttp.web.json_response(current)
        if method == "PATCH":
            wanted = ((data or {}).get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on namespaces "{name}": '
                                                "the object has been modified; please apply your changes "
                                                "to the latest version and try again")
            patched = dict(kdicts.merge_patch_dict(current, data or {}))
            patched["metadata"] = dict(patched["metadata"])
            self._stamp(patched["metadata"])
            self.objects[NAMESPACES, None, name].history.append(patched)
            return aiohttp.web.json_response(patched)
        if method == "DELETE":
            if current["metadata"].get("deletionTimestamp"):
                return _status(409, "Conflict", f'Operation cannot be fulfilled on namespaces "{name}": The system '
                                                "is ensuring all content is removed from this namespace.")
            # The namespace controller deletes everything inside (here at once, not eventually).
            for (_, ns, _), obj in list(self.objects.items()):
                if ns == name and not obj.deleted:
                    obj.delete()
            self.objects[NAMESPACES, None, name].delete()
            return aiohttp.web.json_response(current)
        return _status(405, "MethodNotAllowed", method)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault("metadata", {})
                namespace = request.namespace or meta.get("namespace")
                if namespace and self.live(NAMESPACES, None, namespace) is None:
                    raise KubernetesError(status=404, reason="NotFound", message=f'namespaces "{namespace}" not found')
                if namespace:
                    meta["namespace"] = namespace
                key = (request.resource, namespace, meta.get("name"))
                if self.live(*key) is None:  # a duplicate keeps its 409 from kmock
                    meta["uid"] = str(uuid.uuid4())
                    meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    self._stamp(meta)
                    if request.resource == SERVICES and request.data.get("spec", {}).get("type") == "NodePort":
                        for port in request.data["spec"].get("ports", []):
                            port.setdefault("nodePort", next(self._node_ports))
            elif request.action == kmock.action.UPDATE and request.name is not None:
                current = self.live(request.resource, request.namespace, request.name)
                meta = request.data.setdefault("metadata", {}) if isinstance(request.data, dict) else {}
                wanted = meta.get("resourceVersion")
                if current is not None and wanted is not None and wanted != current["metadata"].get("resourceVersion"):
                    raise KubernetesError(status=409, reason="Conflict", message="the object has been modified")
                self._stamp(meta)
        return await super()._handle(request)


class VirtController:
    """Writes the status that virt-controller, virt-handler and CDI would write."""

    def __init__(self, emulator: LabEmulator) -> None:
        self.emulator = emulator

    @staticmethod
    def where(node_id: str) -> tuple[str, str]:
        from cluster.kubevirt.manifests import node_names

        names = node_names(node_id)
        return names.namespace, names.vm

    # Status bodies as virt-controller/CDI write them (tests validate them against the schemas).
    @staticmethod
    def vm_status_body(printable: str, message: str | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"printableStatus": printable}
        if message:
            status["conditions"] = [{"type": "Ready", "status": "False", "reason": "Failure", "message": message}]
        return status

    @staticmethod
    def vmi_body(namespace: str, name: str, phase: str, *, ready: bool = False, ip: str | None = None,
                 message: str | None = None) -> dict[str, Any]:
        condition: dict[str, Any] = {"type": "Ready", "status": "True" if ready else "False"}
        if message:
            condition["message"] = message
        status: dict[str, Any] = {"phase": phase, "conditions": [condition]}
        if ip:
            status["interfaces"] = [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}]
        return {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"domain": {"devices": {}}},
            "status": status,
        }

    @staticmethod
    def dv_status_body(phase: str, progress: str = "N/A", restarts: int = 0,
                       message: str | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": phase, "progress": progress, "restartCount": restarts}
        if message:
            status["conditions"] = [{"type": "Running", "status": "False", "message": message}]
        return status

    def vm_status(self, node_id: str, printable: str, message: str | None = None) -> None:
        ns, name = self.where(node_id)
        self.emulator.objects[VMS, ns, name]["status"] = self.vm_status_body(printable, message)

    def vmi(self, node_id: str, phase: str, *, ready: bool = False, ip: str | None = None,
            message: str | None = None) -> None:
        ns, name = self.where(node_id)
        self.emulator.objects[VMIS, ns, name] = self.vmi_body(ns, name, phase, ready=ready, ip=ip, message=message)

    def running(self, node_id: str, ip: str) -> None:
        self.vm_status(node_id, "Running")
        self.vmi(node_id, "Running", ready=True, ip=ip)

    def dv_status(self, node_id: str, phase: str, progress: str = "N/A", restarts: int = 0,
                  message: str | None = None) -> None:
        from cluster.kubevirt.manifests import node_names

        names = node_names(node_id)
        self.emulator.objects[DVS, names.namespace, names.datavolume]["status"] = self.dv_status_body(
            phase, progress, restarts, message)

    def pvc(self, node_id: str) -> None:
        """CDI creates the target PVC, named like the DataVolume."""
        from cluster.kubevirt.manifests import node_names

        names = node_names(node_id)
        self.emulator.objects[PVCS, names.namespace, names.datavolume] = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": names.datavolume, "namespace": names.namespace},
        }
