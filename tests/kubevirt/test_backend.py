"""The kubevirt backend over HTTP against the (completed) kmock emulator: the objects it creates,
claims under conflict, readiness/failure, the PVC-clone fallback, teardown and error mapping."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.kubevirt import labels as L
from cluster.kubevirt import manifests as M
from cluster.kubevirt.api import PERMISSIONS, AsyncKubeApi, KubeApi
from cluster.kubevirt.backend import KubeVirtCluster
from cluster.models import ClaimRequest, ClaimWant, NodePhase, NodeSpec, NodeState, SessionRef, SessionWiring
from cluster.port import ClusterUnavailable, NodeNotFound, PermanentClusterError
from labs.models import ContainerDiskSource, PvcCloneSource, PvcRef, Role
from tests.kubevirt.conftest import Clock
from tests.kubevirt.emulator import DVS, NAMESPACES, POLICIES, PVCS, SECRETS, SERVICES, VMS, LabEmulator, VirtController

pytestmark = pytest.mark.timeout(30)

IMAGE = "127.0.0.1:5000/labrador/cp@sha256:" + "d" * 64
CLONE = PvcCloneSource(pvc=PvcRef(namespace="golden", name="cp-disk"), size="12Gi")


def ref(session_id: str) -> SessionRef:
    return SessionRef(session_id=session_id, workflow_id=f"lab-session/{session_id}", run_id=f"run-{session_id}")


def spec(node_id: str, node_class: str = "cp", *, disk: Any = None, session: SessionRef | None = None) -> NodeSpec:
    return NodeSpec(node_id=node_id, node_class=node_class,
                    role=Role.CONTROLPLANE if node_class == "cp" else Role.WORKER, image=IMAGE,
                    kubernetes_version="1.31.2", cpu_cores=1, memory="1536Mi",
                    disk=disk or ContainerDiskSource(), session=session)


def live(emulator: LabEmulator) -> set[tuple[str, str | None, str]]:
    return {(key[0].plural, key[1], key[2]) for key in emulator.live_keys()}


async def test_provision_creates_exactly_the_node_objects_once(cluster: KubeVirtCluster, emulator: LabEmulator,
                                                               platform_key: tuple[Any, str]) -> None:
    first = await cluster.provision(spec("pool-cp-1"))
    assert live(emulator) == {
        ("namespaces", None, "lab-pool-cp-1"),
        ("networkpolicies", "lab-pool-cp-1", "default-deny"),
        ("secrets", "lab-pool-cp-1", "labrador-ssh-key"),
        ("virtualmachines", "lab-pool-cp-1", "pool-cp-1"),
    }
    secret = emulator.live(SECRETS, "lab-pool-cp-1", "labrador-ssh-key")
    assert secret is not None and secret["stringData"]["key1"] == platform_key[1]
    vm = emulator.live(VMS, "lab-pool-cp-1", "pool-cp-1")
    assert vm is not None and vm["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] == IMAGE
    again = await cluster.provision(spec("pool-cp-1"))  # the Secret answers 409 and is left alone
    assert again == first and first.state == NodeState.PROVISIONING
    assert len(live(emulator)) == 4


async def test_bad_input_creates_nothing(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    with pytest.raises(PermanentClusterError, match="node_id: 'Bad_Node'"):
        await cluster.provision(spec("Bad_Node"))
    with pytest.raises(PermanentClusterError, match=r"memory: '1\.5 GiB'"):
        await cluster.provision(spec("ok").model_copy(update={"memory": "1.5 GiB"}))
    assert live(emulator) == set()


async def test_provision_without_platform_key_is_refused(sync_api: KubeApi, emulator: LabEmulator) -> None:
    keyless = KubeVirtCluster(AsyncKubeApi(sync_api))
    with pytest.raises(PermanentClusterError, match="ssh_private_key"):
        await keyless.provision(spec("pool-cp-1"))
    assert live(emulator) == set()


async def test_claim_conflict_moves_on_to_the_next_free_node(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    for node_id in ("pool-a", "pool-b"):
        await cluster.provision(spec(node_id))
        await cluster.mark_free(node_id)
    # Another worker wins the first node we try between our list and our patch: the API answers 409.
    fault = emulator.inject("PATCH", r"^/api/v1/namespaces/lab-pool-[ab]$", 409,
                            message="the object has been modified")
    result = await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    assert len(fault.hits) == 1
    lost = fault.hits[0].rsplit("/lab-", 1)[1]
    (won,) = [n.node_id for n in result.nodes]
    assert won != lost
    ns = emulator.live(NAMESPACES, None, f"lab-{won}")
    assert ns is not None and ns["metadata"]["labels"][L.SESSION] == "s1"
    assert ns["metadata"]["annotations"][L.WORKFLOW_ID] == "lab-session/s1"
    assert ns["metadata"]["annotations"][L.RUN_ID] == "run-s1"
    vm = emulator.live(VMS, f"lab-{won}", won)
    assert vm is not None and vm["metadata"]["labels"][L.STATE] == "claimed"
    assert L.SESSION not in vm["spec"]["template"]["metadata"]["labels"]
    other = emulator.live(NAMESPACES, None, f"lab-{lost}")
    assert other is not None and other["metadata"]["labels"][L.STATE] == "free"


def test_claim_order_spreads_sessions_over_the_pool() -> None:
    from cluster.kubevirt.backend import claim_order

    pool = [{"metadata": {"name": f"lab-pool-{i}"}} for i in range(8)]
    firsts = {claim_order(pool, f"s{i}")[0]["metadata"]["name"] for i in range(20)}
    assert len(firsts) > 3  # not everyone races for lab-pool-0
    assert claim_order(pool, "s1") == claim_order(list(reversed(pool)), "s1")  # stable per session
    assert sorted(n["metadata"]["name"] for n in claim_order(pool, "s1")) == [f"lab-pool-{i}" for i in range(8)]


async def test_claim_patch_carries_the_resource_version_it_read(cluster: KubeVirtCluster,
                                                                emulator: LabEmulator) -> None:
    await cluster.provision(spec("pool-a"))
    await cluster.mark_free("pool-a")
    listed = emulator.live(NAMESPACES, None, "lab-pool-a")
    assert listed is not None
    read_version = listed["metadata"]["resourceVersion"]
    await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    history = emulator.objects[NAMESPACES, None, "lab-pool-a"].history
    assert history[-1]["metadata"]["resourceVersion"] != read_version  # the precondition was met, then bumped


async def test_a_stale_claim_loses(cluster: KubeVirtCluster, emulator: LabEmulator, sync_api: KubeApi) -> None:
    """With a real precondition (our emulator honours it for namespaces): a patch with the version
    read before someone else's claim is refused, and the backend treats the node as taken."""
    await cluster.provision(spec("pool-a"))
    await cluster.mark_free("pool-a")
    stale = emulator.live(NAMESPACES, None, "lab-pool-a")
    await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    assert stale is not None
    assert await cluster._try_claim(stale, ref("s2")) is None
    ns = emulator.live(NAMESPACES, None, "lab-pool-a")
    assert ns is not None and ns["metadata"]["labels"][L.SESSION] == "s1"


@pytest.mark.parametrize(
    ("printable", "cause"),
    [("ErrImagePull", "ErrImagePull"), ("ImagePullBackOff", "ImagePullBackOff"),
     ("CrashLoopBackOff", "CrashLoopBackOff"), ("ErrorUnschedulable", "ErrorUnschedulable")],
)
async def test_terminal_vm_states_fail_fast(cluster: KubeVirtCluster, virt: VirtController, printable: str,
                                            cause: str) -> None:
    await cluster.provision(spec("n1"))
    virt.vm_status("n1", printable, message="manifest unknown")
    status = await cluster.node_status("n1")
    assert status.phase == NodePhase.FAILED
    assert cause in (status.reason or "") and "lab-n1/n1" in (status.reason or "")


async def test_failed_vmi_and_readiness_over_http(cluster: KubeVirtCluster, virt: VirtController) -> None:
    await cluster.provision(spec("n1"))
    virt.vmi("n1", "Scheduled")
    assert (await cluster.node_status("n1")).phase == NodePhase.PROVISIONING
    virt.vmi("n1", "Running", ready=False, ip="10.244.1.7")
    assert (await cluster.node_status("n1")).phase == NodePhase.PROVISIONING
    virt.running("n1", "10.244.1.7")
    ready = await cluster.node_status("n1")
    assert ready.phase == NodePhase.READY and ready.address == "10.244.1.7"
    target = await cluster.ssh_target("n1")
    assert (target.host, target.port, target.username) == ("10.244.1.7", 22, "root")
    await cluster.mark_free("n1")
    virt.vmi("n1", "Running", ready=False, ip="10.244.1.7")
    assert (await cluster.node_status("n1")).phase == NodePhase.NOT_READY
    virt.vmi("n1", "Failed", message="virt-launcher OOMKilled")
    failed = await cluster.node_status("n1")
    assert failed.phase == NodePhase.FAILED and "OOMKilled" in (failed.reason or "")


async def test_ssh_target_without_address_is_retryable(cluster: KubeVirtCluster) -> None:
    await cluster.provision(spec("n1"))
    with pytest.raises(ClusterUnavailable, match="no address yet"):
        await cluster.ssh_target("n1")


# --- PVC clone fallback ---------------------------------------------------------------------------
def annotations(emulator: LabEmulator, node_id: str) -> dict[str, str]:
    ns = emulator.live(NAMESPACES, None, M.node_names(node_id).namespace)
    assert ns is not None
    return dict(ns["metadata"].get("annotations") or {})


async def test_clone_is_retried_after_failure_with_backoff(cluster: KubeVirtCluster, emulator: LabEmulator,
                                                           virt: VirtController, clock: Clock) -> None:
    await cluster.provision(spec("n1", disk=CLONE))
    names = M.node_names("n1")
    dv = emulator.live(DVS, names.namespace, names.datavolume)
    assert dv is not None and dv["spec"]["source"]["pvc"] == {"namespace": "golden", "name": "cp-disk"}
    virt.pvc("n1")
    virt.dv_status("n1", "Failed", message="source PVC golden/cp-disk in use")
    status = await cluster.node_status("n1")
    assert status.phase == NodePhase.PROVISIONING and "retrying" in (status.reason or "")
    assert emulator.live(DVS, names.namespace, names.datavolume) is None
    assert emulator.live(PVCS, names.namespace, names.datavolume) is None
    assert "in use" in annotations(emulator, "n1")[L.CLONE_LAST_ERROR]
    clock.advance(5)  # inside the 10 s backoff: nothing is recreated
    assert "clone attempt 2 in" in ((await cluster.node_status("n1")).reason or "")
    assert emulator.live(DVS, names.namespace, names.datavolume) is None
    clock.advance(6)
    await cluster.node_status("n1")
    assert emulator.live(DVS, names.namespace, names.datavolume) is not None
    assert annotations(emulator, "n1")[L.CLONE_ATTEMPT] == "2"
    virt.dv_status("n1", "Succeeded", "100.0%")
    virt.running("n1", "10.244.2.2")
    assert (await cluster.node_status("n1")).phase == NodePhase.READY


async def test_clone_is_retried_when_it_stalls_and_gives_up_after_the_limit(
    cluster: KubeVirtCluster, emulator: LabEmulator, virt: VirtController, clock: Clock
) -> None:
    await cluster.provision(spec("n1", disk=CLONE))
    names = M.node_names("n1")
    for attempt in (1, 2, 3):
        virt.dv_status("n1", "CloneInProgress", "12.5%")
        await cluster.node_status("n1")  # progress noticed
        clock.advance(30)
        assert emulator.live(DVS, names.namespace, names.datavolume) is not None  # not stalled yet
        clock.advance(31)
        status = await cluster.node_status("n1")
        if attempt < 3:
            assert status.phase == NodePhase.PROVISIONING and "no clone progress" in (status.reason or "")
            assert emulator.live(DVS, names.namespace, names.datavolume) is None
            clock.advance(10 * 2 ** (attempt - 1))
            await cluster.node_status("n1")  # backoff over: recreated
            assert annotations(emulator, "n1")[L.CLONE_ATTEMPT] == str(attempt + 1)
    assert status.phase == NodePhase.FAILED
    assert "golden/cp-disk" in (status.reason or "") and "giving up" in (status.reason or "")


async def test_clone_pod_restart_storm_triggers_a_retry(cluster: KubeVirtCluster, emulator: LabEmulator,
                                                        virt: VirtController) -> None:
    await cluster.provision(spec("n1", disk=CLONE))
    virt.dv_status("n1", "CloneInProgress", "1.0%", restarts=5)
    status = await cluster.node_status("n1")
    assert "restarted 5 times" in (status.reason or "")
    assert emulator.live(DVS, "lab-n1", M.node_names("n1").datavolume) is None


# --- session wiring, exposure, teardown -----------------------------------------------------------
async def claimed_session(cluster: KubeVirtCluster, session_id: str) -> None:
    await cluster.provision(spec(f"{session_id}-cp", session=ref(session_id)))
    await cluster.provision(spec(f"{session_id}-w1", "worker", session=ref(session_id)))


async def test_wire_puts_one_session_policy_in_each_node_namespace(cluster: KubeVirtCluster,
                                                                   emulator: LabEmulator) -> None:
    await claimed_session(cluster, "s1")
    await claimed_session(cluster, "s2")
    await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"]))
    await cluster.wire(SessionWiring(session=ref("s2"), controlplane="s2-cp", workers=["s2-w1"]))
    name = M.session_policy_name("s1")
    for ns in ("lab-s1-cp", "lab-s1-w1"):
        policy = emulator.live(POLICIES, ns, name)
        assert policy is not None
        peer = policy["spec"]["ingress"][0]["from"][0]
        assert peer["namespaceSelector"]["matchLabels"][L.SESSION] == "s1"
    await cluster.unwire("s1")
    assert emulator.live(POLICIES, "lab-s1-cp", name) is None
    assert emulator.live(POLICIES, "lab-s2-cp", M.session_policy_name("s2")) is not None  # not another session's
    assert emulator.live(POLICIES, "lab-s1-cp", "default-deny") is not None  # isolation stays


async def test_wire_and_expose_refuse_a_node_of_another_session(cluster: KubeVirtCluster,
                                                                emulator: LabEmulator) -> None:
    await claimed_session(cluster, "s1")
    await claimed_session(cluster, "s2")
    with pytest.raises(PermanentClusterError, match="s2-w1 is not claimed by session s1"):
        await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s2-w1"]))
    with pytest.raises(PermanentClusterError, match="s2-cp is not claimed by session s1"):
        await cluster.expose("s1", "s2-cp")
    assert emulator.live_keys(POLICIES) == [k for k in emulator.live_keys(POLICIES) if k[2] == "default-deny"]
    assert emulator.live_keys(SERVICES) == []


async def test_expose_creates_nodeport_service_and_ingress_rule(cluster: KubeVirtCluster,
                                                                emulator: LabEmulator) -> None:
    await claimed_session(cluster, "s1")
    endpoint = await cluster.expose("s1", "s1-cp")
    service = emulator.live(SERVICES, "lab-s1-cp", M.ssh_service_name("s1"))
    assert service is not None
    assert endpoint.host == "labs.example.test" and endpoint.port == service["spec"]["ports"][0]["nodePort"]
    assert service["spec"]["selector"] == {L.MANAGED_BY: "labrador", L.NODE_ID: "s1-cp"}
    assert emulator.live(POLICIES, "lab-s1-cp", M.ssh_policy_name("s1")) is not None
    inventory = await cluster.inventory()
    assert (inventory.exposed_ports_in_use, inventory.exposed_ports_capacity) == (1, 2768)
    await cluster.unexpose("s1")
    assert emulator.live(SERVICES, "lab-s1-cp", M.ssh_service_name("s1")) is None
    assert emulator.live(POLICIES, "lab-s1-cp", M.ssh_policy_name("s1")) is None


async def test_release_leaves_no_object_of_the_session(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    await claimed_session(cluster, "s1")
    await claimed_session(cluster, "s2")
    await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"]))
    await cluster.expose("s1", "s1-cp")
    assert await cluster.release("s1") == 2
    assert not [k for k in live(emulator) if "s1" in (k[1] or "") or "s1" in k[2]]
    assert any(k[1] == "lab-s2-cp" for k in live(emulator))
    assert await cluster.release("s1") == 0


async def test_delete_is_idempotent(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    await cluster.provision(spec("n1"))
    await cluster.delete_node("n1")
    await cluster.delete_node("n1")
    await cluster.unexpose("nobody")
    await cluster.unwire("nobody")
    assert live(emulator) == set()
    with pytest.raises(NodeNotFound, match="n1"):
        await cluster.mark_free("n1")


# --- errors over HTTP -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (500, ClusterUnavailable, "HTTP 500"),
        (503, ClusterUnavailable, "HTTP 503"),
        (429, ClusterUnavailable, "throttled"),
        (410, ClusterUnavailable, "expired"),
        (403, PermanentClusterError, "RBAC"),
        (422, PermanentClusterError, "invalid"),
        (400, PermanentClusterError, "HTTP 400"),
    ],
)
async def test_api_errors_are_mapped_and_name_the_object(cluster: KubeVirtCluster, emulator: LabEmulator,
                                                         status: int, error: type[Exception], words: str) -> None:
    emulator.inject("POST", r"/virtualmachines$", status)
    with pytest.raises(error, match=words) as caught:
        await cluster.provision(spec("n1"))
    assert "VirtualMachine lab-n1/n1" in str(caught.value)
    if error is ClusterUnavailable:
        await cluster.provision(spec("n1"))  # the retry completes the node
        assert emulator.live(VMS, "lab-n1", "n1") is not None


async def test_unreachable_api_is_retryable() -> None:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # discard port: nothing listens
    cluster = KubeVirtCluster(AsyncKubeApi(KubeApi(client.ApiClient(configuration), timeout=(1.0, 1.0))),
                              ssh_public_key="ssh-ed25519 AAAA test")
    with pytest.raises(ClusterUnavailable, match="unreachable"):
        await cluster.node_status("n1")


async def test_every_call_made_is_a_declared_permission(cluster: KubeVirtCluster, sync_api: KubeApi,
                                                        virt: VirtController) -> None:
    await cluster.provision(spec("n1", disk=CLONE))
    virt.dv_status("n1", "Failed")
    await cluster.node_status("n1")
    await cluster.mark_free("n1")
    await claimed_session(cluster, "s1")
    await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"]))
    await cluster.expose("s1", "s1-cp")
    await cluster.inventory()
    await cluster.unexpose("s1")
    await cluster.unwire("s1")
    await cluster.release("s1")
    await cluster.delete_node("n1")
    declared = {(g, r, v) for g, r, v, _ in PERMISSIONS}
    assert sync_api.calls <= declared
    assert ("", "secrets", "get") not in sync_api.calls and ("", "secrets", "list") not in sync_api.calls


async def test_worker_builds_the_backend_from_settings_and_a_kubeconfig(
    emulator: LabEmulator, platform_key: tuple[Any, str], tmp_path: Any
) -> None:
    import yaml

    import worker
    from labrador.settings import Settings

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "emu", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}],
    }))
    settings = Settings(cluster_backend="kubevirt", kube_config=kubeconfig, ssh_private_key=platform_key[0],
                        kube_namespace="labrador", external_host="labs.example.test")
    port = worker.build_port(settings)
    assert isinstance(port, KubeVirtCluster) and port.ssh_public_key == platform_key[1]
    await port.provision(spec("n1"))
    assert emulator.live(VMS, "lab-n1", "n1") is not None


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Any) -> None:
    from cluster.kubevirt.api import load_api_client

    with pytest.raises(PermanentClusterError, match="kube_config"):
        load_api_client(str(tmp_path / "absent"))


async def test_concurrent_claimers_never_share_a_node(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    """Six sessions claim at once from four free nodes. Our emulator honours the namespace
    resourceVersion precondition like the API server, so losers get 409 and move on."""
    import asyncio

    for i in range(4):
        await cluster.provision(spec(f"pool-{i}"))
        await cluster.mark_free(f"pool-{i}")
    results = await asyncio.gather(*(
        cluster.claim(ClaimRequest(session=ref(f"s{i}"), wants=[ClaimWant(node_class="cp", count=1)]))
        for i in range(6)
    ))
    claimed = [n.node_id for r in results for n in r.nodes]
    assert sorted(claimed) == [f"pool-{i}" for i in range(4)]
    holders = {}
    for i in range(4):
        ns = emulator.live(NAMESPACES, None, f"lab-pool-{i}")
        assert ns is not None
        holders[f"pool-{i}"] = ns["metadata"]["labels"][L.SESSION]
    assert {n.node_id: n.session.session_id for r in results for n in r.nodes if n.session} == holders


async def test_a_terminating_namespace_is_gone_for_the_pool_and_blocks_reprovisioning(
    cluster: KubeVirtCluster, emulator: LabEmulator
) -> None:
    """On a real cluster namespace deletion takes a while (Terminating): that node is not claimable,
    not in the inventory, MISSING, and provisioning its ID again waits (retryable) until it is gone."""
    await cluster.provision(spec("pool-a"))
    await cluster.mark_free("pool-a")
    namespace = emulator.objects[NAMESPACES, None, "lab-pool-a"]
    namespace["metadata"] = dict(namespace.raw["metadata"], deletionTimestamp="2026-01-01T00:00:00Z")
    assert (await cluster.node_status("pool-a")).phase == NodePhase.MISSING
    assert (await cluster.inventory()).nodes == []
    result = await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    assert result.nodes == []
    with pytest.raises(ClusterUnavailable, match="terminating"):
        await cluster.provision(spec("pool-a"))
    await cluster.delete_node("pool-a")  # the API answers 409 for a terminating namespace: already going


async def test_delete_if_unclaimed_loses_to_a_claim_that_patched_first(cluster: KubeVirtCluster,
                                                                       emulator: LabEmulator) -> None:
    """A claim changes the namespace between our read and our `deleting` patch: the API server
    answers 409 on the resourceVersion precondition, we report False and delete nothing."""
    await cluster.provision(spec("pool-a"))
    await cluster.mark_free("pool-a")
    fault = emulator.inject("PATCH", r"^/api/v1/namespaces/lab-pool-a$", 409, message="the object has been modified")
    deletes = emulator.inject("DELETE", r"^/api/v1/namespaces/lab-pool-a$", 500, message="must not be called")
    assert await cluster.delete_node_if_unclaimed("pool-a") is False
    assert len(fault.hits) == 1 and deletes.hits == []
    ns = emulator.live(NAMESPACES, None, "lab-pool-a")
    assert ns is not None and ns["metadata"]["labels"][L.STATE] == "free"
    assert emulator.live(VMS, "lab-pool-a", "pool-a") is not None


async def test_delete_if_unclaimed_marks_then_deletes_and_refuses_claimed(cluster: KubeVirtCluster,
                                                                          emulator: LabEmulator) -> None:
    await cluster.provision(spec("pool-a"))
    await cluster.mark_free("pool-a")
    await cluster.provision(spec("pool-b"))
    await cluster.mark_free("pool-b")
    result = await cluster.claim(ClaimRequest(session=ref("s1"), wants=[ClaimWant(node_class="cp", count=1)]))
    (held,) = [n.node_id for n in result.nodes]
    other = "pool-b" if held == "pool-a" else "pool-a"
    assert await cluster.delete_node_if_unclaimed(held) is False
    assert emulator.live(NAMESPACES, None, f"lab-{held}") is not None
    # The delete fails after the mark: the node is gone for claims, inventory and mark_free already.
    emulator.inject("DELETE", rf"^/api/v1/namespaces/lab-{other}$", 500, message="injected")
    with pytest.raises(ClusterUnavailable):
        await cluster.delete_node_if_unclaimed(other)
    ns = emulator.live(NAMESPACES, None, f"lab-{other}")
    assert ns is not None and ns["metadata"]["labels"][L.STATE] == L.STATE_DELETING
    assert [n.node_id for n in (await cluster.inventory()).nodes] == [held]
    assert (await cluster.claim(ClaimRequest(session=ref("s2"),
                                             wants=[ClaimWant(node_class="cp", count=1)]))).nodes == []
    with pytest.raises(NodeNotFound):
        await cluster.mark_free(other)
    assert (await cluster.node_status(other)).phase == NodePhase.MISSING
    # The retry finds the mark and finishes the deletion; absent afterwards is success too.
    assert await cluster.delete_node_if_unclaimed(other) is True
    assert emulator.live(NAMESPACES, None, f"lab-{other}") is None
    assert await cluster.delete_node_if_unclaimed(other) is True
