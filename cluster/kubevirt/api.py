"""A thin, reusable layer over the official `kubernetes` client: dicts in, dicts out.

Why not the typed `CoreV1Api`/`CustomObjectsApi` methods: our manifests are plain dicts (pure
functions, schema-validated), CRDs come back as dicts anyway, and one code path for every resource
lets each call be declared as (group, resource, verb) in `PERMISSIONS`, which the RBAC test
compares with deploy/. The client still does configuration (KUBECONFIG or in-cluster), auth, TLS
and serialisation. The sync client runs in threads from async code (`AsyncKubeApi`'s pool for
calls; the cache's watch streams in daemon threads of their own, see cache.py). Lists are paged
(`limit`/`continue`); `watch` streams events and can be ended from another thread.

Error mapping (`api_error`): every status is turned deliberately into `ClusterUnavailable`
(retry) or `PermanentClusterError` (do not), with the object named. 404 on get means "absent"
and 404 on delete means "already gone"; 409 on create means "exists" (create-or-get); callers
handle those before mapping. `NotFound` (404), `Conflict` (409) and `Gone` (410) are subclasses a
caller can catch: a claim moves on to the next node on the first two, the cache relists on the third.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config

from cluster.port import ClusterUnavailable, PermanentClusterError

log = logging.getLogger(__name__)
T = TypeVar("T")
API_THREADS = 16  # concurrent API calls per worker process (and HTTP connections kept per host)
LIST_PAGE = 500  # objects per list page (limit/continue): bounded responses at any cluster size
WATCH_READ_SLACK = 30.0  # seconds a watch may stay silent past its timeoutSeconds before we call it dead
Obj = dict[str, Any]
Items = list[Obj]  # (a method named `list` shadows the builtin inside the classes below)


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
PVCS = Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
VIRTUAL_MACHINES = Resource("kubevirt.io", "v1", "virtualmachines", "VirtualMachine")
VIRTUAL_MACHINE_INSTANCES = Resource("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance")
# KubeVirt's subresource API group (served by virt-api): pause/unpause of a running VMI.
VMI_SUBRESOURCES = Resource(
    "subresources.kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance"
)
DATA_VOLUMES = Resource("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume")
# The image pipeline (cluster/kubevirt/export.py, builder.py) calls the official client directly,
# with both export API versions; its calls are declared in PERMISSIONS below.
VIRTUAL_MACHINE_EXPORTS = Resource("export.kubevirt.io", "v1", "virtualmachineexports", "VirtualMachineExport")

# Scope of a permission: "cluster" (lab namespaces are created on the fly, so a ClusterRole) or
# "worker-namespace" (a Role in the worker's own namespace).
CLUSTER = "cluster"
WORKER_NAMESPACE = "worker-namespace"

# Every API call the kubevirt backend makes: (group, resource, verb, scope). `KubeApi` refuses a
# call that is not declared here, and tests/kubevirt/test_rbac.py checks deploy/rbac.yaml grants
# exactly these. Secrets: create and delete only (the worker writes secrets whose content it knows).
PERMISSIONS: frozenset[tuple[str, str, str, str]] = frozenset(
    {
        ("", "namespaces", "create", CLUSTER),
        ("", "namespaces", "get", CLUSTER),
        ("", "namespaces", "list", CLUSTER),
        ("", "namespaces", "watch", CLUSTER),
        ("", "namespaces", "patch", CLUSTER),
        ("", "namespaces", "delete", CLUSTER),
        ("", "secrets", "create", CLUSTER),
        ("", "secrets", "delete", CLUSTER),
        ("", "services", "create", CLUSTER),
        ("", "services", "get", CLUSTER),
        ("", "services", "list", CLUSTER),
        ("", "services", "watch", CLUSTER),
        ("", "services", "delete", CLUSTER),
        ("", "persistentvolumeclaims", "get", CLUSTER),
        ("", "persistentvolumeclaims", "delete", CLUSTER),
        ("networking.k8s.io", "networkpolicies", "create", CLUSTER),
        ("networking.k8s.io", "networkpolicies", "get", CLUSTER),
        ("networking.k8s.io", "networkpolicies", "list", CLUSTER),
        ("networking.k8s.io", "networkpolicies", "watch", CLUSTER),
        ("networking.k8s.io", "networkpolicies", "delete", CLUSTER),
        ("kubevirt.io", "virtualmachines", "create", CLUSTER),
        ("kubevirt.io", "virtualmachines", "get", CLUSTER),
        ("kubevirt.io", "virtualmachines", "list", CLUSTER),
        ("kubevirt.io", "virtualmachines", "watch", CLUSTER),
        ("kubevirt.io", "virtualmachines", "patch", CLUSTER),
        ("kubevirt.io", "virtualmachineinstances", "get", CLUSTER),
        ("kubevirt.io", "virtualmachineinstances", "list", CLUSTER),
        ("kubevirt.io", "virtualmachineinstances", "watch", CLUSTER),
        # Pause/resume of a lab (PUT .../virtualmachineinstances/NAME/pause|unpause).
        ("subresources.kubevirt.io", "virtualmachineinstances/pause", "update", CLUSTER),
        ("subresources.kubevirt.io", "virtualmachineinstances/unpause", "update", CLUSTER),
        ("cdi.kubevirt.io", "datavolumes", "create", CLUSTER),
        ("cdi.kubevirt.io", "datavolumes", "get", CLUSTER),
        ("cdi.kubevirt.io", "datavolumes", "delete", CLUSTER),
        # Not an HTTP call of ours: CDI authorises a cross-namespace clone by checking that the
        # DataVolume's creator may `create` `datavolumes/source` in the source PVC's namespace.
        ("cdi.kubevirt.io", "datavolumes/source", "create", CLUSTER),
        # The image pipeline (cluster/kubevirt/export.py, builder.py): exports of stopped VMs/PVCs
        # anywhere, builder VMs (their DataVolumes go with them through the owner reference).
        ("export.kubevirt.io", "virtualmachineexports", "create", CLUSTER),
        ("export.kubevirt.io", "virtualmachineexports", "get", CLUSTER),
        ("export.kubevirt.io", "virtualmachineexports", "delete", CLUSTER),
        ("kubevirt.io", "virtualmachines", "delete", CLUSTER),
        ("", "configmaps", "get", WORKER_NAMESPACE),
        ("", "configmaps", "create", WORKER_NAMESPACE),
        ("", "configmaps", "patch", WORKER_NAMESPACE),
    }
)


class Conflict(ClusterUnavailable):
    """409 on an update with a resourceVersion precondition: someone else changed the object."""


class NotFound(PermanentClusterError):
    """404 where absence is not an answer: a missing object, or the API (CRD) is not installed."""


class Gone(ClusterUnavailable):
    """410: the resourceVersion (or continue token) is too old for the API server; re-list."""


class UndeclaredCall(PermanentClusterError):
    """A programming error: an API call missing from PERMISSIONS (and so from the RBAC)."""


def describe(resource: Resource, namespace: str | None, name: str | None) -> str:
    where = f"{namespace}/{name}" if namespace and name else (name or namespace or "*")
    return f"{resource.kind} {where}"


def _status_message(body: bytes | str | None) -> str:
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        return text.strip().splitlines()[0][:300] if text.strip() else ""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("reason") or "")[:300]
    return ""


def api_error(status: int, message: str, verb: str, what: str) -> Exception:
    """The deliberate mapping of an HTTP status to the port's error classes."""
    text = f"{verb} {what}: HTTP {status}" + (f": {message}" if message else "")
    if status == 409:
        # Outside create-or-get and claims: a concurrent writer; a retry re-reads and succeeds.
        return Conflict(text)
    if status == 410:
        return Gone(text + " (resourceVersion expired; retry re-reads)")
    if status == 429:
        return ClusterUnavailable(text + " (throttled by the API server)")
    if status >= 500:
        return ClusterUnavailable(text)
    if status == 401:
        # In-cluster tokens rotate and the client reloads them: worth a retry, loudly.
        return ClusterUnavailable(text + " (unauthenticated: check the worker's credentials)")
    if status == 403:
        if "being terminated" in message:
            return ClusterUnavailable(text + " (namespace still terminating; retry)")
        return PermanentClusterError(text + " (forbidden: the worker's RBAC lacks this permission)")
    if status == 404:
        return NotFound(text + " (not found: missing object or API not installed)")
    if status == 422:
        return PermanentClusterError(text + " (invalid object)")
    return PermanentClusterError(text)


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """KUBECONFIG (or ~/.kube/config) if present, else the in-cluster service account."""
    configuration = client.Configuration()
    configuration.connection_pool_maxsize = API_THREADS
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    except (config.ConfigException, FileNotFoundError, TypeError) as kube_config_error:
        if kubeconfig:
            raise PermanentClusterError(f"kube_config: {kubeconfig}: {kube_config_error}") from None
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise PermanentClusterError(
                f"kubevirt backend: no kubeconfig (KUBECONFIG, ~/.kube/config, kube_config) and not running "
                f"in a cluster ({exc})"
            ) from None
    return client.ApiClient(configuration)


class KubeApi:
    """Synchronous generic calls; `AsyncKubeApi` runs them in threads."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        permissions: frozenset[tuple[str, str, str, str]] = PERMISSIONS,
    ) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.permissions = {(g, r, v) for g, r, v, _ in permissions}
        self.calls: set[tuple[str, str, str]] = set()  # what was actually called (tests read it)

    def _send(
        self,
        verb: str,
        method: str,
        resource: Resource,
        namespace: str | None,
        name: str | None,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        subresource: str | None = None,
        object_name: str | None = None,
        timeout: tuple[float, float] | None = None,
        stream: bool = False,
    ) -> Any:
        """One HTTP call, declared in PERMISSIONS. Returns the client's response, its body read
        unless `stream` (then the caller reads it and closes it). Non-2xx raises HttpError."""
        plural = resource.plural + (f"/{subresource}" if subresource else "")
        key = (resource.group, plural, verb)
        if key not in self.permissions:
            raise UndeclaredCall(f"{verb} {plural}.{resource.group or 'core'} is not declared in PERMISSIONS")
        self.calls.add(key)
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        what = describe(resource, namespace, name or object_name)
        try:
            request = self.api_client.param_serialize(
                method,
                resource.path(namespace, name, subresource),
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(*request, _request_timeout=timeout or self.timeout)
            status = int(response.status)
            if stream and 200 <= status <= 299:
                return response
            response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailable(f"{verb} {what}: API server unreachable: {exc}") from exc
        if not 200 <= status <= 299:
            raise HttpError(status, _status_message(response.data), verb, what)
        return response

    def _request(self, verb: str, method: str, resource: Resource, namespace: str | None, name: str | None,
                 **kwargs: Any) -> Obj:
        response = self._send(verb, method, resource, namespace, name, **kwargs)
        return json.loads(response.data) if response.data else {}

    # --- verbs --------------------------------------------------------------------------------
    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """The object, or None when absent."""
        try:
            return self._request("get", "GET", resource, namespace, name)
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise exc.mapped() from None

    def list(self, resource: Resource, namespace: str | None = None, label_selector: str | None = None) -> list[Obj]:
        """Every matching object, fetched in pages of LIST_PAGE."""
        items, _ = self.list_all(resource, namespace, label_selector)
        return items

    def list_page(self, resource: Resource, namespace: str | None, label_selector: str | None, *,
                  limit: int = 0, continue_token: str | None = None) -> tuple[Items, str, str | None]:
        """One page: (items, the list's resourceVersion, the continue token or None when last)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        if limit:
            query.append(("limit", str(limit)))
        if continue_token:
            query.append(("continue", continue_token))
        try:
            result = self._request("list", "GET", resource, namespace, None, query=query)
        except HttpError as exc:
            raise exc.mapped() from None
        meta = result.get("metadata") or {}
        return list(result.get("items") or []), str(meta.get("resourceVersion") or ""), meta.get("continue") or None

    def list_all(self, resource: Resource, namespace: str | None = None, label_selector: str | None = None, *,
                 limit: int = 0) -> tuple[Items, str]:
        """All pages, (items, resourceVersion of the list). The API server serves every page at the
        first page's resourceVersion; an expired continue token (410) raises `Gone`: start again."""
        items: Items = []
        token: str | None = None
        version = ""
        while True:
            page, page_version, token = self.list_page(resource, namespace, label_selector,
                                                       limit=limit or LIST_PAGE, continue_token=token)
            items += page
            version = version or page_version
            if not token:
                return items, version

    def watch(self, resource: Resource, label_selector: str | None, resource_version: str, *,
              timeout_seconds: int, on_event: Callable[[Obj], None],
              on_open: Callable[[Callable[[], None]], None] | None = None) -> None:
        """Stream watch events from `resource_version` until the server ends the watch (it does
        after `timeout_seconds`), calling `on_event` with each decoded event, in order; ERROR events
        (410 Gone for an expired version) are passed on like the others. Blocks: run it in a thread.
        `on_open` receives a function that ends the stream from another thread (the kubernetes
        client's own trick: shut the socket down, which unblocks the read)."""
        from kubernetes.watch.watch import iter_resp_lines

        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_seconds))]
        if label_selector:
            query.append(("labelSelector", label_selector))
        # Read timeout: a little longer than the server's own end of the watch (bookmarks or not).
        timeout = (self.timeout[0], float(timeout_seconds) + WATCH_READ_SLACK)
        try:
            response = self._send("watch", "GET", resource, None, None, query=query, timeout=timeout, stream=True)
        except HttpError as exc:
            raise exc.mapped() from None
        raw = response.response
        if on_open is not None:
            on_open(lambda: _shutdown(raw))
        what = describe(resource, None, None)
        try:
            for line in iter_resp_lines(raw):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("watch %s: undecodable line skipped: %.120s", what, line)
                    continue
                if isinstance(event, dict):
                    on_event(event)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailable(f"watch {what}: stream broken: {exc}") from exc
        finally:
            raw.release_conn()

    def create(self, resource: Resource, body: Obj) -> tuple[Obj, bool]:
        """Create-or-get: (object, created). An existing object of that name is returned as is."""
        meta = body.get("metadata", {})
        namespace, name = meta.get("namespace"), meta["name"]
        try:
            return self._request("create", "POST", resource, namespace, None, body=body,
                                 content_type="application/json", object_name=name), True
        except HttpError as exc:
            if exc.status != 409:
                raise exc.mapped() from None
        existing = self.get(resource, namespace, name)
        if existing is None:
            raise ClusterUnavailable(f"create {describe(resource, namespace, name)}: exists but vanished; retry")
        return existing, False

    def create_only(self, resource: Resource, body: Obj) -> bool:
        """Create, treating 409 as done, without reading back (for Secrets: no get permission)."""
        meta = body.get("metadata", {})
        try:
            self._request("create", "POST", resource, meta.get("namespace"), None, body=body,
                          content_type="application/json", object_name=meta.get("name"))
            return True
        except HttpError as exc:
            if exc.status == 409:
                return False
            raise exc.mapped() from None

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: Obj) -> Obj:
        """JSON merge patch (works for built-ins and CRDs alike). A metadata.resourceVersion in the
        patch is a precondition: 409 raises `Conflict`."""
        try:
            return self._request("patch", "PATCH", resource, namespace, name, body=patch,
                                 content_type="application/merge-patch+json")
        except HttpError as exc:
            raise exc.mapped() from None

    def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Delete-if-exists: True if this call deleted it, False if it was already gone or going.

        404: gone. 409: the API server refuses to delete a namespace that is already terminating
        ("the system is ensuring all content is removed"); we send no preconditions, so a 409 here
        can only mean that the deletion is already under way."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._request("delete", "DELETE", resource, namespace, name, body=body, content_type="application/json")
            return True
        except HttpError as exc:
            if exc.status in (404, 409):
                return False
            raise exc.mapped() from None

    def put_subresource(self, resource: Resource, namespace: str, name: str, subresource: str, body: Obj) -> None:
        """PUT to a subresource (KubeVirt's pause/unpause). Errors are raised as `HttpError` so the
        caller can read a 409 ("already paused") before mapping it."""
        self._request("update", "PUT", resource, namespace, name, body=body, content_type="application/json",
                      subresource=subresource)


def _shutdown(raw: Any) -> None:
    import socket

    try:
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

class HttpError(Exception):
    def __init__(self, status: int, message: str, verb: str, what: str) -> None:
        super().__init__(f"{verb} {what}: HTTP {status}: {message}")
        self.status, self.message, self.verb, self.what = status, message, verb, what

    def mapped(self) -> Exception:
        return api_error(self.status, self.message, self.verb, self.what)


class AsyncKubeApi:
    """The same calls, awaited: each runs the sync client in a thread of our own pool.

    Our own pool, not asyncio's default one (min(32, cpus + 4) threads, shared with everything
    else in the worker): a burst of node steps should not queue behind unrelated blocking work."""

    def __init__(self, sync: KubeApi, *, max_workers: int = API_THREADS) -> None:
        self.sync = sync
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kube-api")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        return await self._run(self.sync.get, resource, namespace, name)

    async def list(self, resource: Resource, namespace: str | None = None, label_selector: str | None = None
                   ) -> list[Obj]:
        return await self._run(self.sync.list, resource, namespace, label_selector)

    async def create(self, resource: Resource, body: Obj) -> tuple[Obj, bool]:
        return await self._run(self.sync.create, resource, body)

    async def create_only(self, resource: Resource, body: Obj) -> bool:
        return await self._run(self.sync.create_only, resource, body)

    async def patch(self, resource: Resource, namespace: str | None, name: str, patch: Obj) -> Obj:
        return await self._run(self.sync.patch, resource, namespace, name, patch)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        return await self._run(self.sync.delete, resource, namespace, name)

    async def put_subresource(self, resource: Resource, namespace: str, name: str, subresource: str,
                              body: Obj) -> None:
        await self._run(self.sync.put_subresource, resource, namespace, name, subresource, body)
