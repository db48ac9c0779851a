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
- serves every list and watch itself, like the API server's watch cache: one event log with a
  global resourceVersion; lists paged with `limit`/`continue` (every page at the first page's
  version; `expire_continue_tokens()` makes the next page 410); equality label selectors applied
  (an object leaving a selector is DELETED for that watch, entering it ADDED); `?watch=true` streams
  from a resourceVersion, with BOOKMARK events when asked (`allowWatchBookmarks`), ended by
  `timeoutSeconds` or `end_watches()`; `compact()` makes older versions answer 410 Gone inside the
  stream (as the real watch cache does); `after_list(resource, fn)` changes an object between a
  list and the watch that follows it;
- counts every request (`requests_log`), so a benchmark can count what the backend costs;
- serves KubeVirt's `subresources.kubevirt.io/v1` pause/unpause of a VMI as virt-api does (409 when
  already paused / not paused / not running, 404 without a VMI), setting the Paused condition;
- lets a test inject an HTTP error on the next N requests matching a method, a path regex and
  optionally a query regex.
Writes from tests and from `VirtController` go through `put`/`modify`, so watchers see them.

`VirtController` plays virt-controller/CDI: it writes VM, VMI and DataVolume status.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import copy
import itertools
import json
import re
import uuid
from collections.abc import Callable
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
KNOWN = {(r.group, r.version, r.plural): r for r in [NAMESPACES, *DECLARED]}
Resource = Any

_NS_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")
_COLLECTION = re.compile(
    r"^(?:/api/(?P<core>v1)|/apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)/?$"
)


@dataclass(frozen=True)
class Event:
    version: int
    resource: Resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    """Equality selectors (`a=b,c=d`), what the backend sends."""
    labels = labels or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key) != value.lstrip("="):
            return False
    return True


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
    query: re.Pattern[str] | None = None
    hits: list[str] = field(default_factory=list)


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code,
         "reason": reason, "message": message},
        status=code,
    )


@attrs.define(kw_only=True)
class LabEmulator(kmock.KubernetesEmulator):
    version: int = attrs.field(default=0, init=False)  # the latest resourceVersion handed out
    _node_ports: itertools.count[int] = attrs.field(factory=lambda: itertools.count(30000), init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    events: list[Event] = attrs.field(factory=list, init=False)
    _event_versions: list[int] = attrs.field(factory=list, init=False)
    compacted: int = attrs.field(default=0, init=False)  # watches from versions below this get 410
    _changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _watch_generation: int = attrs.field(default=0, init=False)
    _bookmark_generation: int = attrs.field(default=0, init=False)
    _snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    _after_list: list[tuple[Resource, Callable[[], None]]] = attrs.field(factory=list, init=False)
    requests_log: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)  # method, path, query
    open_watches: int = attrs.field(default=0, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    subresource_calls: list[tuple[str, str, str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in DECLARED:
            self.resources[resource] = {}

    # --- test controls ------------------------------------------------------------------------
    def inject(self, method: str, path: str, status: int, *, times: int = 1, message: str = "injected",
               query: str | None = None) -> Fault:
        fault = Fault(method.upper(), re.compile(path), status, times, message,
                      re.compile(query) if query is not None else None)
        self.faults.append(fault)
        return fault

    def end_watches(self) -> None:
        """The API server drops every open watch (a restart, a load balancer): the stream just
        ends, without a last BOOKMARK (the one a watch gets when its timeoutSeconds is up)."""
        self._watch_generation += 1
        self._wake()

    def bookmark(self) -> None:
        """Every open watch that asked for bookmarks gets one with the current resourceVersion."""
        self._bookmark_generation += 1
        self._wake()

    def compact(self) -> None:
        """etcd compaction: watching from any version seen so far now answers 410 Gone."""
        self.compacted = self.version + 1
        self.end_watches()

    def expire_continue_tokens(self) -> None:
        self._snapshots.clear()

    def after_list(self, resource: Resource, change: Callable[[], None]) -> None:
        """Run `change` once, right after the next complete list of `resource` is served: the
        change lands after the list's resourceVersion, before the watch that follows it."""
        self._after_list.append((resource, change))

    @property
    def last_event_version(self) -> int:
        return self._event_versions[-1] if self._event_versions else 0

    def requests_since(self, mark: int, *, watches: bool = False) -> list[tuple[str, str, str]]:
        """Requests after `mark` (an index in requests_log); watch streams only if asked."""
        return [r for r in self.requests_log[mark:] if watches or "watch=true" not in r[2]]

    # --- writes that watchers see -------------------------------------------------------------
    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _emit(self, resource: Resource, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        version = int(obj.get("metadata", {}).get("resourceVersion") or self.version)
        self.events.append(Event(version, resource, kind, copy.deepcopy(obj), copy.deepcopy(old)))
        self._event_versions.append(version)
        self._wake()

    def put(self, resource: Resource, namespace: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object as a controller would (a new resourceVersion, an event)."""
        key = (resource, namespace, name)
        old = copy.deepcopy(self.live(*key))
        new = copy.deepcopy(body)
        meta = new.setdefault("metadata", {})
        meta["name"] = name
        if namespace:
            meta["namespace"] = namespace
        if old is not None:
            meta.setdefault("uid", old["metadata"].get("uid"))
            meta.setdefault("creationTimestamp", old["metadata"].get("creationTimestamp"))
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        meta["resourceVersion"] = self._next_version()
        if key in self.objects:
            self.objects[key].history.append(new)
        else:
            self.objects[key] = new
        self._emit(resource, "ADDED" if old is None else "MODIFIED", new, old)
        return new

    def modify(self, resource: Resource, namespace: str | None, name: str,
               change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Change a live object in place (e.g. set a status or a deletionTimestamp)."""
        current = self.live(resource, namespace, name)
        if current is None:
            raise KeyError(f"{resource.plural} {namespace}/{name} does not exist")
        body = copy.deepcopy(current)
        change(body)
        return self.put(resource, namespace, name, body)

    def remove(self, resource: Resource, namespace: str | None, name: str) -> None:
        """Delete a live object as a controller would (watchers get DELETED)."""
        key = (resource, namespace, name)
        current = self.live(*key)
        if current is None:
            return
        self.objects[key].delete()
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_version()
        self._emit(resource, "DELETED", gone, current)

    def live(self, resource: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def live_keys(self, resource: Any | None = None) -> list[tuple[Any, str | None, str]]:
        return [key for key, obj in self.objects.items()
                if not obj.deleted and (resource is None or key[0] == resource)]

    def _stamp(self, meta: dict[str, Any]) -> None:
        meta["resourceVersion"] = self._next_version()

    # --- request handling ---------------------------------------------------------------------
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        await raw_request.read()
        self.requests_log.append((raw_request.method, raw_request.path, raw_request.query_string))
        for fault in self.faults:
            if (fault.remaining > 0 and fault.method == raw_request.method and fault.path.search(raw_request.path)
                    and (fault.query is None or fault.query.search(raw_request.query_string))):
                fault.remaining -= 1
                fault.hits.append(raw_request.path)
                return _status(fault.status, "Injected", fault.message)
        collection = _COLLECTION.match(raw_request.path)
        if raw_request.method == "GET" and collection:
            group = "" if collection.group("core") else collection.group("group")
            version = collection.group("core") or collection.group("version")
            resource = KNOWN.get((group, version, collection.group("plural")))
            if resource is not None:
                if raw_request.query.get("watch") in ("true", "1"):
                    return await self._watch(raw_request, resource, collection.group("ns"))
                return self._list(raw_request, resource, collection.group("ns"))
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
        self.modify(VMIS, namespace, name, lambda body: body.__setitem__("status", copy.deepcopy(status)))
        return aiohttp.web.Response(status=200)

    def _namespaces(self, method: str, name: str | None, data: Any) -> aiohttp.web.StreamResponse:
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
            self._emit(NAMESPACES, "ADDED", obj, None)
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
            self._emit(NAMESPACES, "MODIFIED", patched, current)
            return aiohttp.web.json_response(patched)
        if method == "DELETE":
            if current["metadata"].get("deletionTimestamp"):
                return _status(409, "Conflict", f'Operation cannot be fulfilled on namespaces "{name}": The system '
                                                "is ensuring all content is removed from this namespace.")
            # The namespace controller deletes everything inside (here at once, not eventually).
            for (res, ns, obj_name), obj in list(self.objects.items()):
                if ns == name and not obj.deleted:
                    self.remove(res, ns, obj_name)
            self.remove(NAMESPACES, None, name)
            return aiohttp.web.json_response(current)
        return _status(405, "MethodNotAllowed", method)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # One write at a time: the version stamped here must reach the event log before any later
        # one does, or a watch resuming from the later version would miss this event.
        async with self._write_lock:
            return await self._handle_serially(request)

    async def _handle_serially(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
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
        before = None
        key = None
        if request.resource is not None and request.name is not None:
            key = (request.resource, request.namespace, request.name)
            before = copy.deepcopy(self.live(*key))
        elif request.resource is not None and request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.get("metadata", {})
            key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        response = await super()._handle(request)
        if key is not None and 200 <= response.status <= 299:
            self._after_write(request.action, key, before)
        return response

    def _after_write(self, action: Any, key: tuple[Any, str | None, str], before: dict[str, Any] | None) -> None:
        now = self.live(*key)
        if action == kmock.action.CREATE and now is not None:
            self._emit(key[0], "ADDED", now, None)
        elif action == kmock.action.UPDATE and now is not None:
            self._emit(key[0], "MODIFIED", now, before)
        elif action == kmock.action.DELETE and now is None and before is not None:
            gone = copy.deepcopy(before)
            gone["metadata"]["resourceVersion"] = self._next_version()
            self._emit(key[0], "DELETED", gone, before)

    # --- list and watch, like the API server's watch cache ---------------------------------------
    def _matching(self, resource: Resource, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        items = []
        for (res, ns, _), obj in self.objects.items():
            if res != resource or obj.deleted or (namespace is not None and ns != namespace):
                continue
            raw = obj.raw
            if selector_matches(selector, raw.get("metadata", {}).get("labels")):
                items.append(copy.deepcopy(raw))
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return items

    def _list(self, request: aiohttp.web.BaseRequest, resource: Resource, namespace: str | None
              ) -> aiohttp.web.StreamResponse:
        query = request.query
        token = query.get("continue")
        limit = int(query.get("limit") or 0)
        if token:
            try:
                snapshot_id, offset_text = base64.urlsafe_b64decode(token.encode()).decode().split(":")
                version, items = self._snapshots[snapshot_id]
                offset = int(offset_text)
            except (ValueError, KeyError):
                return _status(410, "Expired", "The provided continue parameter is too old to display a "
                                               "consistent list result. You can start a new list without "
                                               "the continue parameter.")
        else:
            snapshot_id, offset = uuid.uuid4().hex, 0
            version, items = self.version, self._matching(resource, namespace, query.get("labelSelector", ""))
        page = items[offset:offset + limit] if limit else items[offset:]
        meta: dict[str, Any] = {"resourceVersion": str(version)}
        if limit and offset + limit < len(items):
            self._snapshots[snapshot_id] = (version, items)
            meta["continue"] = base64.urlsafe_b64encode(f"{snapshot_id}:{offset + limit}".encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        else:
            self._snapshots.pop(snapshot_id, None)
            for hook in [h for h in self._after_list if h[0] == resource]:
                self._after_list.remove(hook)
                hook[1]()
        return aiohttp.web.json_response({"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page})

    async def _watch(self, request: aiohttp.web.BaseRequest, resource: Resource, namespace: str | None
                     ) -> aiohttp.web.StreamResponse:
        query = request.query
        selector = query.get("labelSelector", "")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def visible(obj: dict[str, Any] | None) -> bool:
            if obj is None or (namespace is not None and obj["metadata"].get("namespace") != namespace):
                return False
            return selector_matches(selector, obj["metadata"].get("labels"))

        since_text = query.get("resourceVersion") or "0"
        self.open_watches += 1
        try:
            since = int(since_text)
            if since == 0:  # "any version": the current state as ADDED events, then changes
                for obj in self._matching(resource, namespace, selector):
                    await send("ADDED", obj)
                since = self.version
            elif since < self.compacted:
                await send("ERROR", {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                     "code": 410, "reason": "Expired",
                                     "message": f"too old resource version: {since} ({self.compacted})"})
                await response.write_eof()
                return response
            generation, marks = self._watch_generation, self._bookmark_generation
            deadline = asyncio.get_running_loop().time() + timeout
            cursor = since

            async def bookmark() -> None:
                await send("BOOKMARK", {"kind": resource.plural, "apiVersion": resource.version,
                                        "metadata": {"resourceVersion": str(cursor)}})

            while generation == self._watch_generation:
                start = bisect.bisect_right(self._event_versions, cursor)
                for event in self.events[start:]:
                    cursor = max(cursor, event.version)  # every event, so bookmarks move quiet watches on
                    if event.resource != resource:
                        continue
                    was, now = visible(event.old), visible(event.obj)
                    if event.type == "DELETED":
                        if was or now:
                            await send("DELETED", event.obj)
                    elif now:
                        await send("ADDED" if event.type == "ADDED" or not was else "MODIFIED", event.obj)
                    elif was:
                        await send("DELETED", event.obj)  # left the selector
                remaining = deadline - asyncio.get_running_loop().time()
                if bookmarks and (remaining <= 0 or marks != self._bookmark_generation):
                    marks = self._bookmark_generation
                    await bookmark()
                if remaining <= 0:
                    break
                changed = self._changed
                if bisect.bisect_right(self._event_versions, cursor) < len(self.events):
                    continue  # more came while we were sending
                try:
                    await asyncio.wait_for(changed.wait(), timeout=remaining)
                except TimeoutError:
                    pass
            await response.write_eof()
        except ConnectionResetError:
            pass
        finally:
            self.open_watches -= 1
        return response


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
        status = self.vm_status_body(printable, message)
        self.emulator.modify(VMS, ns, name, lambda vm: vm.__setitem__("status", status))

    def vmi(self, node_id: str, phase: str, *, ready: bool = False, ip: str | None = None,
            message: str | None = None) -> None:
        """virt-controller creates the VMI from the VM template: it carries the template's labels."""
        ns, name = self.where(node_id)
        body = self.vmi_body(ns, name, phase, ready=ready, ip=ip, message=message)
        vm = self.emulator.live(VMS, ns, name)
        labels = ((vm or {}).get("spec", {}).get("template", {}).get("metadata", {}) or {}).get("labels")
        if labels:
            body["metadata"]["labels"] = dict(labels)
        self.emulator.put(VMIS, ns, name, body)

    def running(self, node_id: str, ip: str) -> None:
        self.vm_status(node_id, "Running")
        self.vmi(node_id, "Running", ready=True, ip=ip)

    def dv_status(self, node_id: str, phase: str, progress: str = "N/A", restarts: int = 0,
                  message: str | None = None) -> None:
        from cluster.kubevirt.manifests import node_names

        names = node_names(node_id)
        status = self.dv_status_body(phase, progress, restarts, message)
        self.emulator.modify(DVS, names.namespace, names.datavolume, lambda dv: dv.__setitem__("status", status))

    def pvc(self, node_id: str) -> None:
        """CDI creates the target PVC, named like the DataVolume."""
        from cluster.kubevirt.manifests import node_names

        names = node_names(node_id)
        self.emulator.put(PVCS, names.namespace, names.datavolume, {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": names.datavolume, "namespace": names.namespace},
        })
