"""The kubevirt backend of the cluster port: one VirtualMachine per lab node, in its own namespace.

The namespace is the node's source of truth: static labels (managed-by, node ID, class, role),
state and session labels (patched at claim time with a resourceVersion precondition), and
bookkeeping annotations (image, memory, workflow/run of the claiming session, clone tracking).
Deleting the namespace deletes everything of the node (VM, Secret, policies, Service, DataVolume).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cluster.kubevirt import labels as L
from cluster.kubevirt import manifests as M
from cluster.kubevirt.api import (
    DATA_VOLUMES,
    NAMESPACES,
    NETWORK_POLICIES,
    PVCS,
    SECRETS,
    SERVICES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINES,
    VMI_SUBRESOURCES,
    AsyncKubeApi,
    Conflict,
    HttpError,
    KubeApi,
    NotFound,
    Resource,
    load_api_client,
)
from cluster.kubevirt.cache import ClusterCache
from cluster.kubevirt.status import (
    CloneAction,
    ClonePolicy,
    CloneTracking,
    decide_clone,
    is_deleting,
    is_paused,
    is_terminating,
    node_state,
    parse_node_status,
    vmi_address,
)
from cluster.models import (
    ClaimRequest,
    ClaimResult,
    Inventory,
    InventorySummary,
    NodePhase,
    NodeRecord,
    NodeSpec,
    NodeState,
    NodeStatus,
    SessionLeftovers,
    SessionRef,
    SessionWiring,
    SshEndpoint,
    SshTarget,
    UsageCounts,
    count_usage,
    summarize,
)
from cluster.naming import is_dns_label, short_hash
from cluster.port import ClusterUnavailable, NodeNotFound, PermanentClusterError
from cluster.secret_files import read_key_bytes
from cluster.settings import Settings
from labs.models import ContainerDiskSource, PvcCloneSource, Role, quantity_bytes

log = logging.getLogger(__name__)
Obj = dict[str, Any]

DEFAULT_NODEPORT_RANGE = "30000-32767"
SYNC_WAIT = 10.0  # seconds a read waits for the cache's first list before it reads directly instead
WATCH_RECHECK = 10.0  # seconds the ready wait sleeps at most between looks, events or not (clone follower)


def nodeport_capacity(port_range: str) -> int:
    """How many NodePorts the API server can hand out: the size of --service-node-port-range."""
    low, sep, high = port_range.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise ValueError(f"kube_nodeport_range: {port_range!r} is not a range like '30000-32767'") from None
    if not sep or first > last:
        raise ValueError(f"kube_nodeport_range: {port_range!r} is not a range like '30000-32767'")
    return last - first + 1


def public_key_from_private(path: Path) -> str:
    """The OpenSSH public key of the platform's private key (what the VMs must authorise)."""
    from cryptography.hazmat.primitives import serialization

    data = read_key_bytes(path, "ssh_private_key")
    try:
        key: Any = serialization.load_ssh_private_key(data, password=None)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def _labels(obj: Obj) -> dict[str, str]:
    return dict(_meta(obj).get("labels") or {})


def _annotations(obj: Obj) -> dict[str, str]:
    return dict(_meta(obj).get("annotations") or {})


def record_from_namespace(ns: Obj) -> NodeRecord:
    labels, notes = _labels(ns), _annotations(ns)
    session_id = labels.get(L.SESSION)
    session = None
    if session_id:
        session = SessionRef(session_id=session_id, workflow_id=notes.get(L.WORKFLOW_ID, ""),
                             run_id=notes.get(L.RUN_ID, ""))
    created = notes.get(L.CREATED_AT) or _meta(ns).get("creationTimestamp")
    created_at = datetime.fromisoformat(created.replace("Z", "+00:00")) if created else datetime.now(UTC)
    return NodeRecord(
        node_id=labels[L.NODE_ID],
        node_class=labels.get(L.NODE_CLASS, ""),
        role=Role(labels.get(L.ROLE, Role.WORKER.value)),
        image=notes.get(L.IMAGE, ""),
        state=node_state(ns) or NodeState.PROVISIONING,
        session=session,
        memory_bytes=int(notes.get(L.MEMORY_BYTES) or 0),
        created_at=created_at,
    )


def _disk_source(ns: Obj) -> ContainerDiskSource | PvcCloneSource:
    raw = _annotations(ns).get(L.DISK_SOURCE)
    if raw and '"pvcClone"' in raw:
        return PvcCloneSource.model_validate_json(raw)
    return ContainerDiskSource()


def _validate_spec(spec: NodeSpec) -> None:
    """Bad input creates nothing; the message names the field and the value."""
    if not is_dns_label(spec.node_id) or len(M.node_names(spec.node_id).namespace) > 63:
        raise PermanentClusterError(f"node_id: {spec.node_id!r} is not a DNS label (a-z, 0-9, '-', <= 63)")
    if not is_dns_label(spec.node_class):
        raise PermanentClusterError(f"node_class: {spec.node_class!r} is not a DNS label")
    if not spec.image or any(ch.isspace() for ch in spec.image):
        raise PermanentClusterError(f"image: {spec.image!r} is not an image reference")
    if spec.cpu_cores < 1:
        raise PermanentClusterError(f"cpu_cores: {spec.cpu_cores!r} must be >= 1")
    try:
        quantity_bytes(spec.memory)
    except ValueError:
        raise PermanentClusterError(f"memory: {spec.memory!r} is not a Kubernetes quantity") from None


class KubeVirtCluster:
    def __init__(
        self,
        api: AsyncKubeApi,
        *,
        orchestrator_namespace: str = "labrador",
        external_host: str = "127.0.0.1",
        ssh_public_key: str | None = None,
        nodeport_range: str = DEFAULT_NODEPORT_RANGE,
        clone_policy: ClonePolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cache: ClusterCache | None = None,
        lab_dns: M.LabDns = "cluster",
        ssh_source_ranges: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.cache = cache
        self.orchestrator_namespace = orchestrator_namespace
        self.external_host = external_host
        self.ssh_public_key = ssh_public_key
        self.nodeport_capacity = nodeport_capacity(nodeport_range)
        self.clone_policy = clone_policy or ClonePolicy()
        self.clock = clock
        self.lab_dns = lab_dns
        self.ssh_source_ranges = tuple(ssh_source_ranges)

    @classmethod
    def from_settings(cls, settings: Settings) -> KubeVirtCluster:
        api_client = load_api_client(str(settings.kube_config) if settings.kube_config else None)
        public_key = public_key_from_private(settings.ssh_private_key) if settings.ssh_private_key else None
        sync_api = KubeApi(api_client)
        return cls(
            AsyncKubeApi(sync_api),
            cache=ClusterCache(sync_api),
            orchestrator_namespace=settings.kube_namespace,
            external_host=settings.external_host,
            ssh_public_key=public_key,
            nodeport_range=settings.kube_nodeport_range,
            clone_policy=ClonePolicy(
                stall_timeout=timedelta(seconds=settings.kube_clone_stall_timeout),
                restart_limit=settings.kube_clone_restart_limit,
                max_attempts=settings.kube_clone_max_attempts,
                backoff=timedelta(seconds=settings.kube_clone_backoff),
            ),
            lab_dns=settings.lab_dns,
            ssh_source_ranges=settings.ssh_source_ranges,
        )

    # --- reads: from the cache when it is fresh, else (and to confirm a negative) direct ---------
    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    async def _cached(self) -> ClusterCache | None:
        """The cache if it can answer: listed and watching (a read before the first list waits
        for it a little; a cache whose watch is down for long is not trusted: reads go direct)."""
        cache = self.cache
        if cache is None:
            return None
        if cache.fresh:
            return cache
        if await cache.wait_synced(SYNC_WAIT) and cache.fresh:
            return cache
        return None

    def _observe(self, resource: Resource, obj: Obj | None) -> None:
        """Feed a write's answer to the cache: our next read sees it before the watch event does."""
        if self.cache is not None and obj:
            self.cache.observe(resource, obj)

    async def _delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        deleted = await self.api.delete(resource, namespace, name)
        if self.cache is not None:  # deleted now, or already going (404/409): going either way
            self.cache.deleted(resource, namespace, name)
        return deleted

    async def _get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        obj = await self.api.get(resource, namespace, name)
        self._observe(resource, obj)
        return obj

    async def _namespace(self, node_id: str, *, direct: bool = False) -> Obj | None:
        """The node's namespace. From the cache unless `direct`; absent there, asked directly: a
        node another worker has just created may not have reached this worker's cache yet."""
        name = M.node_names(node_id).namespace
        cache = None if direct else await self._cached()
        if cache is not None:
            ns = cache.get(NAMESPACES, None, name)
            if ns is not None:
                return ns
        return await self._get(NAMESPACES, None, name)

    async def _require_node(self, node_id: str, *, direct: bool = False) -> Obj:
        ns = await self._namespace(node_id, direct=direct)
        if ns is None or is_deleting(ns):
            raise NodeNotFound(f"node {node_id}: namespace {M.node_names(node_id).namespace} does not exist")
        return ns

    async def _require_session_node(self, session_id: str, node_id: str) -> Obj:
        ns = await self._require_node(node_id)
        if _labels(ns).get(L.SESSION) != session_id:  # maybe our cache is behind a claim: ask
            ns = await self._require_node(node_id, direct=True)
        holder = _labels(ns).get(L.SESSION)
        if holder != session_id:
            raise PermanentClusterError(
                f"node {node_id} is not claimed by session {session_id} (held by {holder or 'nobody'})"
            )
        return ns

    async def _list_managed(self, resource: Any, selector: str, *, direct: bool = False) -> list[Obj]:
        """Label-selected objects, from the cache unless `direct` (teardown lists directly: it
        must not miss an object the cache has not seen yet)."""
        cache = None if direct else await self._cached()
        if cache is not None:
            return cache.items(resource, selector)
        # The selector goes to the API server; the re-check keeps us honest if an object changed
        # between list and use.
        items = await self.api.list(resource, None, selector)
        return [item for item in items if L.matches(_labels(item), selector)]

    async def _session_namespaces(self, session_id: str, *, direct: bool = False) -> list[Obj]:
        return await self._list_managed(NAMESPACES, L.session_selector(session_id), direct=direct)

    async def _mirror_state_on_vm(self, node_id: str, state: NodeState, session: SessionRef | None) -> None:
        """The VM object carries state/session labels for humans (kubectl get vm -L ...); the
        namespace stays the truth, so a failure here is logged, not raised."""
        names = M.node_names(node_id)
        try:
            self._observe(VIRTUAL_MACHINES, await self.api.patch(VIRTUAL_MACHINES, names.namespace, names.vm,
                                                                 M.state_patch(state, session)))
        except (ClusterUnavailable, PermanentClusterError) as exc:
            log.warning("node %s: could not mirror state %s on the VM: %s", node_id, state, exc)

    # --- node level -------------------------------------------------------------------------
    async def provision(self, spec: NodeSpec) -> NodeRecord:
        _validate_spec(spec)
        if not self.ssh_public_key:
            raise PermanentClusterError("ssh_private_key: not set; lab VMs need the platform key to be reachable")
        names = M.node_names(spec.node_id)
        ns, created = await self.api.create(NAMESPACES, M.namespace(spec, self.clock()))
        self._observe(NAMESPACES, ns)
        if is_deleting(ns):
            raise ClusterUnavailable(
                f"node {spec.node_id}: namespace {names.namespace} is still terminating (or being deleted); retry"
            )
        if not created and (_labels(ns).get(L.MANAGED_BY) != L.MANAGED_BY_VALUE
                            or _labels(ns).get(L.NODE_ID) != spec.node_id):
            raise PermanentClusterError(f"node {spec.node_id}: namespace {names.namespace} exists and is not ours")
        # Isolation before the VM exists: a node is never reachable before it is wired.
        policy, _ = await self.api.create(NETWORK_POLICIES, M.default_deny_policy(spec.node_id))
        self._observe(NETWORK_POLICIES, policy)
        await self.api.create_only(SECRETS, M.ssh_key_secret(spec.node_id, self.ssh_public_key))
        if isinstance(spec.disk, PvcCloneSource):
            await self.api.create(DATA_VOLUMES, M.datavolume_clone(spec.node_id, spec.disk))
        self._observe(VIRTUAL_MACHINES, (await self.api.create(VIRTUAL_MACHINES, M.virtual_machine(spec)))[0])
        return record_from_namespace(ns)

    async def node_status(self, node_id: str) -> NodeStatus:
        ns = await self._namespace(node_id)
        if ns is None:
            return parse_node_status(node_id, None, None, None)
        vm, vmi = await self._vm_and_vmi(node_id)
        status = parse_node_status(node_id, ns, vm, vmi)
        if status.phase in (NodePhase.READY, NodePhase.FAILED, NodePhase.MISSING):
            return status
        source = _disk_source(ns)
        if isinstance(source, PvcCloneSource):
            return await self._follow_clone(node_id, ns, source, status)
        return status

    async def _vm_and_vmi(self, node_id: str) -> tuple[Obj | None, Obj | None]:
        names = M.node_names(node_id)
        cache = await self._cached()
        if cache is not None:
            return (cache.get(VIRTUAL_MACHINES, names.namespace, names.vm),
                    cache.get(VIRTUAL_MACHINE_INSTANCES, names.namespace, names.vm))
        vm, vmi = await asyncio.gather(
            self.api.get(VIRTUAL_MACHINES, names.namespace, names.vm),
            self.api.get(VIRTUAL_MACHINE_INSTANCES, names.namespace, names.vm),
        )
        return vm, vmi

    async def wait_node_change(self, node_id: str, poll_interval: float) -> None:
        """Return when something about the node may have changed: on the next cache event about
        its namespace, VM or VMI (at most WATCH_RECHECK seconds, so the clone follower and the
        caller's deadline still get their turn); without a cache, after `poll_interval`."""
        cache = await self._cached()
        if cache is None:
            await asyncio.sleep(poll_interval)
            return
        await cache.wait_change([M.node_names(node_id).namespace], WATCH_RECHECK)

    async def _follow_clone(self, node_id: str, ns: Obj, source: PvcCloneSource, status: NodeStatus) -> NodeStatus:
        """One step of the clone follower: retry a failed/stalled/crash-looping clone with backoff,
        give up after the attempt limit with an error naming the source PVC."""
        names = M.node_names(node_id)
        dv = await self.api.get(DATA_VOLUMES, names.namespace, names.datavolume)
        tracking = CloneTracking.from_annotations(_annotations(ns))
        decision = decide_clone(dv, tracking, self.clock(), self.clone_policy)
        action = decision.action
        if action == CloneAction.DONE:
            return status
        if action == CloneAction.CREATE:
            if await self.api.get(PVCS, names.namespace, names.datavolume) is not None:
                return NodeStatus(node_id=node_id, phase=NodePhase.PROVISIONING,
                                  reason="previous clone PVC still terminating")
            await self.api.create(DATA_VOLUMES, M.datavolume_clone(node_id, source))
        elif action == CloneAction.RESTART:
            log.warning("node %s: %s", node_id, decision.reason)
            await self.api.delete(DATA_VOLUMES, names.namespace, names.datavolume)
            await self.api.delete(PVCS, names.namespace, names.datavolume)
        if decision.tracking != tracking:
            self._observe(NAMESPACES, await self.api.patch(
                NAMESPACES, None, names.namespace, {"metadata": {"annotations": decision.tracking.annotations()}}))
        if action == CloneAction.GIVE_UP:
            return NodeStatus(
                node_id=node_id, phase=NodePhase.FAILED,
                reason=f"node {node_id}: clone of PVC {source.pvc.namespace}/{source.pvc.name}: {decision.reason}",
            )
        return NodeStatus(node_id=node_id, phase=NodePhase.PROVISIONING, reason=decision.reason)

    async def mark_free(self, node_id: str) -> NodeRecord:
        ns = await self._require_node(node_id, direct=True)  # its version is the patch's precondition
        state = node_state(ns)
        if state == NodeState.FREE:
            return record_from_namespace(ns)
        if state == NodeState.CLAIMED:
            raise PermanentClusterError(
                f"node {node_id} is claimed by session {_labels(ns).get(L.SESSION)}; it cannot go back to the pool"
            )
        try:
            patched = await self.api.patch(NAMESPACES, None, _meta(ns)["name"],
                                           M.free_patch(_meta(ns).get("resourceVersion")))
        except Conflict as exc:
            raise ClusterUnavailable(f"node {node_id}: changed while marking it free; retry ({exc})") from exc
        self._observe(NAMESPACES, patched)
        await self._mirror_state_on_vm(node_id, NodeState.FREE, None)
        return record_from_namespace(patched)

    async def ssh_target(self, node_id: str) -> SshTarget:
        await self._require_node(node_id)
        names = M.node_names(node_id)
        _, vmi = await self._vm_and_vmi(node_id)
        if not vmi_address(vmi):  # not in (or behind in) our cache: ask
            vmi = await self._get(VIRTUAL_MACHINE_INSTANCES, names.namespace, names.vm)
        address = vmi_address(vmi)
        if not address:
            raise ClusterUnavailable(f"node {node_id}: VirtualMachineInstance {names.namespace}/{names.vm} "
                                     "has no address yet")
        return SshTarget(node_id=node_id, host=address, port=M.SSH_PORT)

    async def delete_node(self, node_id: str) -> None:
        # The namespace takes the VM, Secret, policies, Service and DataVolume with it.
        await self._delete(NAMESPACES, None, M.node_names(node_id).namespace)

    async def delete_node_if_unclaimed(self, node_id: str) -> bool:
        """Two steps, safe against a concurrent claim: (1) patch the state label to `deleting` with
        the resourceVersion we read as precondition, so a claim that got in between makes it 409
        (we lose, nothing is deleted) and a claim coming after sees no `free` label (it only takes
        free nodes); (2) delete the namespace. A retry after (1) finds the mark and finishes (2)."""
        name = M.node_names(node_id).namespace
        ns = await self._namespace(node_id, direct=True)  # its version is the mark's precondition
        if ns is None or is_terminating(ns):
            return True
        state = _labels(ns).get(L.STATE)
        if state != L.STATE_DELETING:
            if state not in (NodeState.FREE.value, NodeState.PROVISIONING.value, None):
                log.info("node %s: %s, not deleting it", node_id, state)
                return False
            version = _meta(ns).get("resourceVersion")
            if not version:
                raise ClusterUnavailable(f"Namespace {name}: read without a resourceVersion; cannot delete safely")
            try:
                self._observe(NAMESPACES, await self.api.patch(NAMESPACES, None, name, M.deleting_patch(str(version))))
            except Conflict:
                log.info("node %s: changed (claimed) while we meant to delete it; leaving it", node_id)
                return False
            except NotFound:  # deleted between our read and our patch
                return True
        await self._delete(NAMESPACES, None, name)
        return True

    async def pause_node(self, node_id: str) -> None:
        await self._set_paused(node_id, True)

    async def unpause_node(self, node_id: str) -> None:
        await self._set_paused(node_id, False)

    async def _set_paused(self, node_id: str, paused: bool) -> None:
        """PUT virtualmachineinstances/NAME/pause|unpause (subresources.kubevirt.io). virt-api answers
        409 when the VMI is already in that state (or not running) and 404 without a VMI: then one look
        at the VMI decides between "already done" (success: idempotent) and a clear error."""
        names = M.node_names(node_id)
        action = "pause" if paused else "unpause"
        try:
            await self.api.put_subresource(VMI_SUBRESOURCES, names.namespace, names.vm, action, {})
            if self.cache is not None:  # the PUT answers no object: read it, so our next status shows it
                await self._get(VIRTUAL_MACHINE_INSTANCES, names.namespace, names.vm)
            return
        except HttpError as exc:
            if exc.status not in (404, 409):
                raise exc.mapped() from None
            refusal = exc.message or f"HTTP {exc.status}"
        await self._require_node(node_id)
        vmi = await self.api.get(VIRTUAL_MACHINE_INSTANCES, names.namespace, names.vm)
        running = ((vmi or {}).get("status") or {}).get("phase") == "Running"
        if paused and running and is_paused(vmi):
            return  # already paused
        if not paused and not (running and is_paused(vmi)):
            return  # nothing to unpause (not paused, or not running at all: the health watch says so)
        raise PermanentClusterError(
            f"node {node_id}: cannot {action} VirtualMachineInstance {names.namespace}/{names.vm}: {refusal}"
        )

    # --- session level ----------------------------------------------------------------------
    async def claim(self, request: ClaimRequest) -> ClaimResult:
        session = request.session
        held = [record_from_namespace(ns) for ns in await self._session_namespaces(session.session_id)
                if not is_terminating(ns)]
        have: dict[str, int] = defaultdict(int)
        for record in held:
            have[record.node_class] += 1
        claimed: list[NodeRecord] = list(held)
        for want in request.wants:
            need = want.count - have[want.node_class]
            if need <= 0:
                continue
            # Candidates from the cache: it may be a little behind, which the patch's
            # resourceVersion precondition makes harmless (a node changed since -> 409 -> next).
            candidates = await self._list_managed(NAMESPACES, L.free_nodes_selector(want.node_class))
            for ns in claim_order(candidates, session.session_id):
                if need <= 0:
                    break
                if is_deleting(ns):
                    continue
                won = await self._try_claim(ns, session)
                if won is not None and all(won.node_id != c.node_id for c in claimed):
                    claimed.append(won)
                    have[want.node_class] += 1
                    need -= 1
        return ClaimResult(nodes=claimed)

    async def _try_claim(self, ns: Obj, session: SessionRef) -> NodeRecord | None:
        """Claim one listed free node. None if it is not to be had: another claimer won it first
        (409 on the precondition), or it was deleted since it was listed (404): try the next one.
        After a 409 the node is read again: if it is ours (an earlier attempt of this very claim,
        which a cache behind it did not show), it counts as claimed."""
        name = _meta(ns)["name"]
        version = _meta(ns).get("resourceVersion")
        if not version:
            raise ClusterUnavailable(f"Namespace {name}: listed without a resourceVersion; cannot claim safely")
        try:
            patched = await self.api.patch(NAMESPACES, None, name, M.claim_patch(str(version), session))
        except NotFound:
            log.info("node namespace %s: deleted since it was listed; trying the next", name)
            return None
        except Conflict:
            current = await self._get(NAMESPACES, None, name)
            if (current is not None and not is_deleting(current)
                    and _labels(current).get(L.SESSION) == session.session_id):
                return record_from_namespace(current)
            log.info("node namespace %s: claimed by someone else first; trying the next", name)
            return None
        self._observe(NAMESPACES, patched)
        record = record_from_namespace(patched)
        await self._mirror_state_on_vm(record.node_id, NodeState.CLAIMED, session)
        return record

    async def wire(self, wiring: SessionWiring) -> None:
        session_id = wiring.session.session_id
        for node_id in [wiring.controlplane, *wiring.workers]:
            await self._require_session_node(session_id, node_id)
        for node_id in [wiring.controlplane, *wiring.workers]:
            policy, _ = await self.api.create(NETWORK_POLICIES, M.session_policy(
                node_id, session_id, self.orchestrator_namespace, lab_dns=self.lab_dns))
            self._observe(NETWORK_POLICIES, policy)

    async def _delete_labelled(self, resource: Any, session_id: str, component: str) -> int:
        selector = L.selector_string(L.session_namespace_selector(session_id) | {L.COMPONENT: component})
        deleted = 0
        for item in await self._list_managed(resource, selector, direct=True):
            meta = _meta(item)
            deleted += int(await self._delete(resource, meta.get("namespace"), meta["name"]))
        return deleted

    async def unwire(self, session_id: str) -> None:
        await self._delete_labelled(NETWORK_POLICIES, session_id, L.COMPONENT_SESSION_NETWORK)

    async def expose(self, session_id: str, node_id: str) -> SshEndpoint:
        await self._require_session_node(session_id, node_id)
        names = M.node_names(node_id)
        policy, _ = await self.api.create(NETWORK_POLICIES, M.ssh_ingress_policy(
            node_id, session_id, source_ranges=self.ssh_source_ranges))
        self._observe(NETWORK_POLICIES, policy)
        service, _ = await self.api.create(SERVICES, M.ssh_service(
            node_id, session_id, source_ranges=self.ssh_source_ranges))
        self._observe(SERVICES, service)
        port = _node_port(service)
        if port is None:
            fresh = await self.api.get(SERVICES, names.namespace, M.ssh_service_name(session_id))
            port = _node_port(fresh or {})
        if port is None:
            raise ClusterUnavailable(f"Service {names.namespace}/{M.ssh_service_name(session_id)}: no nodePort yet")
        return SshEndpoint(host=self.external_host, port=port)

    async def unexpose(self, session_id: str) -> None:
        await self._delete_labelled(SERVICES, session_id, L.COMPONENT_SSH)
        await self._delete_labelled(NETWORK_POLICIES, session_id, L.COMPONENT_SSH)

    async def release(self, session_id: str) -> int:
        deleted = 0
        for ns in await self._session_namespaces(session_id, direct=True):
            if is_terminating(ns):
                continue
            deleted += int(await self._delete(NAMESPACES, None, _meta(ns)["name"]))
        return deleted

    # --- pool -------------------------------------------------------------------------------
    async def inventory_summary(self) -> InventorySummary:
        return summarize(await self.inventory())

    async def usage_counts(self, sessions: Collection[str], nodes: Collection[str]) -> UsageCounts:
        """The inventory's node part only (one label-selected list, from the cache): no Services or
        NetworkPolicies, no leftovers, no sorting."""
        namespaces = await self._list_managed(NAMESPACES, L.managed_selector())
        live = [ns for ns in namespaces if L.NODE_ID in _labels(ns) and not is_deleting(ns)]
        return count_usage(Inventory(nodes=[record_from_namespace(ns) for ns in live]), sessions, nodes)

    async def inventory(self) -> Inventory:
        namespaces, services, policies = await asyncio.gather(
            self._list_managed(NAMESPACES, L.managed_selector()),
            self._list_managed(SERVICES, L.managed_selector()),
            self._list_managed(NETWORK_POLICIES, L.managed_selector()),
        )
        live = [ns for ns in namespaces if L.NODE_ID in _labels(ns) and not is_deleting(ns)]
        # Objects inside a terminating (or marked deleting) namespace go with it: not leftovers.
        going = {_meta(ns).get("name") for ns in namespaces if is_deleting(ns)}
        services = [svc for svc in services if _meta(svc).get("namespace") not in going]
        policies = [pol for pol in policies if _meta(pol).get("namespace") not in going]
        # Oldest first, like a queue: the real API lists by name, we want creation order.
        nodes = sorted((record_from_namespace(ns) for ns in live), key=lambda r: (r.created_at, r.node_id))
        sessions: dict[str, dict[str, Any]] = {}

        def note(session_id: str, kind: str, workflow_id: str | None = None, run_id: str | None = None) -> None:
            entry = sessions.setdefault(session_id, {"kinds": set(), "workflow_id": None, "run_id": None})
            entry["kinds"].add(kind)
            entry["workflow_id"] = entry["workflow_id"] or workflow_id
            entry["run_id"] = entry["run_id"] or run_id

        for record in nodes:
            if record.session is not None:
                note(record.session.session_id, "namespace", record.session.workflow_id or None,
                     record.session.run_id or None)
                note(record.session.session_id, "node")
        for svc in services:
            if _labels(svc).get(L.SESSION):
                note(_labels(svc)[L.SESSION], "service")
        for policy in policies:
            if _labels(policy).get(L.SESSION):
                note(_labels(policy)[L.SESSION], "networkpolicy")
        exposed = [
            svc for svc in services
            if _labels(svc).get(L.COMPONENT) == L.COMPONENT_SSH and (svc.get("spec") or {}).get("type") == "NodePort"
        ]
        return Inventory(
            nodes=nodes,
            sessions=[
                SessionLeftovers(session_id=sid, workflow_id=e["workflow_id"], run_id=e["run_id"],
                                 kinds=sorted(e["kinds"]))
                for sid, e in sorted(sessions.items())
            ],
            exposed_ports_in_use=len(exposed),
            exposed_ports_capacity=self.nodeport_capacity,
        )


def claim_order(candidates: list[Obj], session_id: str) -> list[Obj]:
    """Free nodes in name order, rotated by a hash of the session: concurrent claimers start at
    different nodes instead of all racing for the first one (fewer 409s), and a retried claim of
    the same session walks the same order."""
    ordered = sorted(candidates, key=lambda n: str(_meta(n).get("name")))
    if not ordered:
        return ordered
    start = int(short_hash(session_id), 16) % len(ordered)
    return ordered[start:] + ordered[:start]


def _node_port(service: Obj) -> int | None:
    for port in (service.get("spec") or {}).get("ports") or []:
        if port.get("nodePort"):
            return int(port["nodePort"])
    return None
