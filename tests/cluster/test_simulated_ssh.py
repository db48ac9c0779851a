"""The simulated nodes' SSH: commands recorded, answered from scenarios, never executed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncssh
import pytest

from cluster.port import NodeNotFound
from cluster.simulated import Scenario, ScenarioRule, SimulatedCluster
from cluster.simulated.clock import ManualClock
from labrador.settings import Settings
from tests.cluster.conftest import run, spec

pytestmark = pytest.mark.timeout(30)


async def test_commands_are_recorded_in_order_and_never_run_on_the_host(
    sim: SimulatedCluster, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    await sim.provision(spec("cp-1", session="s1"))
    target = await sim.ssh_target("cp-1")
    for command in ("hostname", f"touch {witness}", "systemctl restart kubelet"):
        result = await run(target.host, target.port, client_key, command)
        assert (result.exit_status, result.stdout, result.stderr) == (0, "", "")
    assert not witness.exists()
    assert sim.commands("cp-1") == ["hostname", f"touch {witness}", "systemctl restart kubelet"]
    records = sim.command_records("cp-1")
    assert [r.session_id for r in records] == ["s1"] * 3
    assert [r.via for r in records] == ["node"] * 3
    assert records[0].at <= records[1].at <= records[2].at


async def test_scenario_rules_answer_in_order_with_node_over_session_over_default(
    sim: SimulatedCluster, client_key: asyncssh.SSHKey
) -> None:
    await sim.provision(spec("cp-1", session="s1"))
    await sim.provision(spec("w-1", "worker", session="s1"))
    sim.set_scenario(Scenario(rules=[ScenarioRule(match="^kubectl get nodes", stdout="default\n")]))
    sim.set_scenario(
        Scenario(
            rules=[
                ScenarioRule(match=r"kubectl get nodes.*-o name", stdout="node/controlplane\n"),
                ScenarioRule(match=r"^kubectl", exit_code=1, stderr="The connection to the server was refused\n"),
            ]
        ),
        session_id="s1",
    )
    sim.set_scenario(Scenario(rules=[ScenarioRule(match="kubelet", exit_code=3)]), node_id="cp-1")

    cp = await sim.ssh_target("cp-1")
    worker = await sim.ssh_target("w-1")
    answers = [
        await run(cp.host, cp.port, client_key, "systemctl is-active kubelet"),  # node rule
        await run(cp.host, cp.port, client_key, "kubectl get nodes -o name"),  # first session rule
        await run(cp.host, cp.port, client_key, "kubectl get pods"),  # second session rule
        await run(worker.host, worker.port, client_key, "systemctl is-active kubelet"),  # no rule: success
    ]
    got = [(a.exit_status, a.stdout, a.stderr) for a in answers]
    assert got == [
        (3, "", ""),
        (0, "node/controlplane\n", ""),
        (1, "", "The connection to the server was refused\n"),
        (0, "", ""),
    ]
    assert [r.exit_code for r in sim.command_records("cp-1")] == [3, 0, 1]

    # The session's answers go with the session; the default ones remain.
    await sim.release("s1")
    await sim.provision(spec("cp-2", session="s2"))
    cp2 = await sim.ssh_target("cp-2")
    result = await run(cp2.host, cp2.port, client_key, "kubectl get nodes -o name")
    assert result.stdout == "default\n"


async def test_a_delayed_answer_makes_a_client_timeout_fire(sim: SimulatedCluster, client_key: asyncssh.SSHKey) -> None:
    await sim.provision(spec("cp-1"))
    sim.set_scenario(Scenario(rules=[ScenarioRule(match="sleep", delay=5)]), node_id="cp-1")
    target = await sim.ssh_target("cp-1")
    with pytest.raises(asyncssh.TimeoutError):
        await run(target.host, target.port, client_key, "sleep 100", timeout=0.2)
    assert sim.commands("cp-1") == ["sleep 100"]


async def test_a_script_piped_to_a_shell_is_recorded_with_the_command(
    sim: SimulatedCluster, client_key: asyncssh.SSHKey
) -> None:
    await sim.provision(spec("cp-1"))
    sim.set_scenario(Scenario(rules=[ScenarioRule(match=r"(?m)^kubeadm reset", exit_code=2)]), node_id="cp-1")
    target = await sim.ssh_target("cp-1")
    result = await run(target.host, target.port, client_key, "bash -s", input="set -e\nkubeadm reset -f\n")
    assert result.exit_status == 2
    assert sim.commands("cp-1") == ["bash -s\nset -e\nkubeadm reset -f\n"]


async def test_an_interactive_shell_answers_line_by_line(sim: SimulatedCluster, client_key: asyncssh.SSHKey) -> None:
    await sim.provision(spec("cp-1"))
    sim.set_scenario(Scenario(rules=[ScenarioRule(match="^whoami$", stdout="root\n")]), node_id="cp-1")
    target = await sim.ssh_target("cp-1")
    async with asyncssh.connect(
        target.host, target.port, username="root", client_keys=[client_key], known_hosts=None
    ) as conn:
        result = await conn.run(input="whoami\nexit\n")
    assert "root\n" in str(result.stdout)
    assert sim.commands("cp-1") == ["whoami"]


async def test_scenario_from_a_yaml_file_via_settings(tmp_path: Path, client_key: asyncssh.SSHKey) -> None:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(
        "rules:\n"
        "  - match: 'crictl ps'\n"
        "    stdout: \"CONTAINER  IMAGE\\n\"\n"
        "  - match: 'check-etcd'\n"
        "    exit_code: 1\n"
        "    stderr: 'etcd is down'\n"
    )
    platform = Scenario(
        rules=[ScenarioRule(match="crictl", stdout="shadowed\n"), ScenarioRule(match="kubeadm token", stdout="join\n")]
    )
    sim = SimulatedCluster.from_settings(
        Settings(data_dir=tmp_path, sim_scenario_file=scenario_file), base_scenario=platform
    )
    try:
        await sim.provision(spec("cp-1"))
        target = await sim.ssh_target("cp-1")
        ok = await run(target.host, target.port, client_key, "crictl ps")
        bad = await run(target.host, target.port, client_key, "/opt/check-etcd")
        base = await run(target.host, target.port, client_key, "kubeadm token create --print-join-command")
        assert (ok.exit_status, ok.stdout) == (0, "CONTAINER  IMAGE\n")
        assert (bad.exit_status, bad.stderr) == (1, "etcd is down")
        assert base.stdout == "join\n"
    finally:
        await sim.aclose()
    scenario_file.write_text("- match: '['\n")
    with pytest.raises(ValueError, match=r"scenario .*scenario\.yaml: rules\.0\.match"):
        Scenario.from_file(scenario_file)


async def test_only_root_with_a_public_key_gets_in(state_file: Path, client_key: asyncssh.SSHKey) -> None:
    other_key = asyncssh.generate_private_key("ssh-ed25519")
    sim = SimulatedCluster(state_file, authorized_keys=[client_key.export_public_key().decode()])
    try:
        await sim.provision(spec("cp-1"))
        target = await sim.ssh_target("cp-1")
        assert (await run(target.host, target.port, client_key, "true")).exit_status == 0
        with pytest.raises(asyncssh.PermissionDenied):
            await run(target.host, target.port, other_key, "true")
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect(
                target.host, target.port, username="ubuntu", client_keys=[client_key], known_hosts=None
            ):
                pass
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect(
                target.host, target.port, username="root", password="root", client_keys=None, known_hosts=None
            ):
                pass
        assert sim.commands("cp-1") == ["true"]
    finally:
        await sim.aclose()


async def test_student_reaches_the_exposed_endpoint_until_unexpose(
    sim: SimulatedCluster, client_key: asyncssh.SSHKey
) -> None:
    await sim.provision(spec("cp-1", session="s1"))
    endpoint = await sim.expose("s1", "cp-1")
    target = await sim.ssh_target("cp-1")
    assert endpoint.port != target.port
    await run(endpoint.host, endpoint.port, client_key, "kubectl get nodes")
    assert [(r.via, r.command) for r in sim.command_records("cp-1")] == [("exposed", "kubectl get nodes")]

    await sim.unexpose("s1")
    with pytest.raises(OSError):
        await run(endpoint.host, endpoint.port, client_key, "true")
    # The orchestrator keeps its own way in until the node is released.
    assert (await run(target.host, target.port, client_key, "true")).exit_status == 0
    await sim.release("s1")
    with pytest.raises(OSError):
        await run(target.host, target.port, client_key, "true")
    with pytest.raises(Exception, match="cp-1"):
        await sim.ssh_target("cp-1")


async def server_key(host: str, port: int, key: asyncssh.SSHKey) -> bytes:
    async with asyncssh.connect(host, port, username="root", client_keys=[key], known_hosts=None) as conn:
        server = conn.get_server_host_key()
        assert server is not None
        return server.public_data


async def test_a_node_shows_one_host_key_to_the_orchestrator_and_the_student(
    sim: SimulatedCluster, client_key: asyncssh.SSHKey
) -> None:
    # The key the setup pins (orchestrator side) is the key the student meets, whichever way in comes
    # first, and it stays the node's own across unexpose and expose (a key is made once per node).
    await sim.provision(spec("cp-1", session="s1"))
    await sim.provision(spec("cp-2", session="s2"))
    first = await sim.expose("s1", "cp-1")
    exposed_first = await server_key(first.host, first.port, client_key)
    target = await sim.ssh_target("cp-1")
    assert await server_key(target.host, target.port, client_key) == exposed_first
    await sim.unexpose("s1")
    again = await sim.expose("s1", "cp-1")
    assert await server_key(again.host, again.port, client_key) == exposed_first

    target = await sim.ssh_target("cp-2")
    node_first = await server_key(target.host, target.port, client_key)
    second = await sim.expose("s2", "cp-2")
    assert await server_key(second.host, second.port, client_key) == node_first
    assert node_first != exposed_first


async def test_concurrent_ssh_targets_share_one_listener(sim: SimulatedCluster) -> None:
    await sim.provision(spec("cp-1"))
    targets = await asyncio.gather(*(sim.ssh_target("cp-1") for _ in range(10)))
    assert len({t.port for t in targets}) == 1


async def test_restarted_backend_serves_the_same_endpoints_with_the_same_host_key(
    state_file: Path, client_key: asyncssh.SSHKey
) -> None:
    clock = ManualClock()
    first = SimulatedCluster(state_file, boot_seconds=10, clock=clock)
    await first.provision(spec("cp-1", session="s1"))
    target = await first.ssh_target("cp-1")
    endpoint = await first.expose("s1", "cp-1")
    async with asyncssh.connect(
        target.host, target.port, username="root", client_keys=[client_key], known_hosts=None
    ) as conn:
        host_key = conn.get_server_host_key()
        await conn.run("echo before")
    await first.aclose()

    second = SimulatedCluster(state_file, boot_seconds=10, clock=clock)
    try:
        # Any call brings back the listeners the previous worker handed out.
        assert (await second.inventory()).nodes[0].node_id == "cp-1"
        assert host_key is not None
        known = asyncssh.import_known_hosts(f"[127.0.0.1]:{target.port} {host_key.export_public_key().decode()}")
        async with asyncssh.connect(
            target.host, target.port, username="root", client_keys=[client_key], known_hosts=known
        ) as conn:
            await conn.run("echo after")
        assert await second.ssh_target("cp-1") == target
        assert await second.expose("s1", "cp-1") == endpoint
        assert (await run(endpoint.host, endpoint.port, client_key, "true")).exit_status == 0
        assert second.commands("cp-1") == ["echo before", "echo after", "true"]
    finally:
        await second.aclose()


async def test_idle_node_listeners_close_and_reopen_on_the_same_port(
    state_file: Path, client_key: asyncssh.SSHKey
) -> None:
    sim = SimulatedCluster(state_file, ssh_idle_seconds=0.05)
    try:
        await sim.provision(spec("cp-1", session="s1"))
        target = await sim.ssh_target("cp-1")
        endpoint = await sim.expose("s1", "cp-1")
        await asyncio.sleep(0.2)
        with pytest.raises(OSError):
            await run(target.host, target.port, client_key, "true")
        # The student's endpoint is never reaped.
        assert (await run(endpoint.host, endpoint.port, client_key, "true")).exit_status == 0
        assert await sim.ssh_target("cp-1") == target
        assert (await run(target.host, target.port, client_key, "true")).exit_status == 0
    finally:
        await sim.aclose()


async def test_a_node_deleted_while_its_listener_starts_gets_no_target(sim: SimulatedCluster) -> None:
    await sim.provision(spec("cp-1"))
    # ssh_target yields while its listener starts; delete_node runs in that gap.
    target, _ = await asyncio.gather(sim.ssh_target("cp-1"), sim.delete_node("cp-1"), return_exceptions=True)
    assert isinstance(target, NodeNotFound), target
    with pytest.raises(NodeNotFound, match="cp-1"):
        await sim.ssh_target("cp-1")


async def test_a_restarted_backend_moves_an_endpoint_whose_port_was_taken(
    state_file: Path, client_key: asyncssh.SSHKey
) -> None:
    first = SimulatedCluster(state_file)
    await first.provision(spec("cp-1"))
    old = await first.ssh_target("cp-1")
    await first.aclose()
    squatter = socket.socket()
    squatter.bind((old.host, old.port))
    squatter.listen()
    second = SimulatedCluster(state_file)
    try:
        new = await second.ssh_target("cp-1")
        assert new.port != old.port
        assert (await run(new.host, new.port, client_key, "true")).exit_status == 0
        assert await second.ssh_target("cp-1") == new
    finally:
        squatter.close()
        await second.aclose()


async def test_the_dev_stack_picks_up_edits_to_the_scenario_file(tmp_path: Path, client_key: asyncssh.SSHKey) -> None:
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text("- match: 'kubectl'\n  exit_code: 1\n")
    base = Scenario(rules=[ScenarioRule(match="kubeadm", stdout="base\n")])
    settings = Settings(data_dir=tmp_path, sim_scenario_file=scenario_file)
    sim = SimulatedCluster.from_settings(settings, base_scenario=base)
    sim.reload_interval = 0.0
    try:
        await sim.provision(spec("cp-1"))
        target = await sim.ssh_target("cp-1")
        assert (await run(target.host, target.port, client_key, "kubectl get nodes")).exit_status == 1
        scenario_file.write_text("- match: 'kubectl'\n  stdout: 'fixed'\n")
        fixed = await run(target.host, target.port, client_key, "kubectl get nodes")
        assert (fixed.exit_status, fixed.stdout) == (0, "fixed")
        assert (await run(target.host, target.port, client_key, "kubeadm version")).stdout == "base\n"
    finally:
        await sim.aclose()
