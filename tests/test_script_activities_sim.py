"""The script activities against the simulated backend's in-process sshd (records, never executes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import node_commands
from activities.script_activities import ScriptActivities
from cluster.models import NodeSpec, SessionRef
from cluster.simulated import SimulatedCluster
from cluster.simulated.scenario import Scenario, ScenarioRule
from cluster.ssh import RetryPolicy, SshRunner
from labrador.settings import Settings
from labs.models import Check, ContainerDiskSource, Role
from tests.test_script_activities import STUDENT_KEY, make_lab
from workflows.models import BoundNode, ChecksInput, ClockStepInput, ExposeInput, SetupInput

SESSION = SessionRef(session_id="s-sim", workflow_id="lab-bob", run_id="run-1")


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[SimulatedCluster, ScriptActivities, list[BoundNode]]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    cluster = SimulatedCluster(
        tmp_path / "sim.sqlite",
        authorized_keys=[key.export_public_key().decode()],
        default_scenario=Scenario(rules=[ScenarioRule(**r) for r in node_commands.SIMULATED_PLATFORM_ANSWERS]),
    )
    nodes = []
    for name, role in [("controlplane", Role.CONTROLPLANE), ("node01", Role.WORKER), ("node02", Role.WORKER)]:
        node_id = f"sim-{name}"
        await cluster.provision(NodeSpec(node_id=node_id, node_class="cp" if role == Role.CONTROLPLANE else "wk",
                                         role=role, image="127.0.0.1:5000/node:v1", kubernetes_version="1.31.2",
                                         cpu_cores=1, memory="1Gi", disk=ContainerDiskSource(), session=SESSION))
        nodes.append(BoundNode(name=name, node_id=node_id, role=role.value, warm=False,
                               address=(await cluster.node_status(node_id)).address))
    activities = ScriptActivities(cluster, Settings(data_dir=tmp_path),
                                  runner=SshRunner(key, retry=RetryPolicy(attempts=2, initial_backoff=0.1)))
    yield cluster, activities, nodes
    await cluster.aclose()


@pytest.mark.timeout(30)
async def test_setup_and_checks_run_against_simulated_nodes(
    sim: tuple[SimulatedCluster, ScriptActivities, list[BoundNode]],
) -> None:
    cluster, activities, nodes = sim
    lab = make_lab()
    result = await ActivityEnvironment().run(
        activities.run_setup, SetupInput(session=SESSION, lab=lab, nodes=nodes, student_public_key=STUDENT_KEY))
    answered_key = node_commands.SIMULATED_PLATFORM_ANSWERS[1]["stdout"].strip()
    assert cluster.commands("sim-node01")[:2] == [
        node_commands.install_authorized_key(answered_key),
        node_commands.join_cluster(node_commands.parse_join_command(
            node_commands.SIMULATED_PLATFORM_ANSWERS[0]["stdout"]), "node01"),
    ]
    assert cluster.commands("sim-controlplane")[0] == node_commands.install_authorized_key(STUDENT_KEY)
    assert cluster.commands("sim-controlplane")[-1] == "echo marked > marker"
    assert set(result.host_keys) == {"controlplane", "node01", "node02"}

    cluster.set_scenario(Scenario(rules=[ScenarioRule(match="systemctl is-active kubelet", stdout="active\n")]),
                         node_id="sim-node01")
    pinned = [n.model_copy(update={"host_key": result.host_keys[n.name]}) for n in nodes]
    report = await ActivityEnvironment().run(activities.run_checks, ChecksInput(session=SESSION, nodes=pinned, checks=[
        Check.model_validate({"name": "kubelet", "node": "node01", "run": "systemctl is-active kubelet",
                              "expect": {"stdout": "^active$"}, "points": 5}),
        Check.model_validate({"name": "no-output", "node": "node02", "run": "systemctl is-active kubelet",
                              "expect": {"stdout": "^active$"}, "points": 5}),
    ]))
    assert [r.passed for r in report.results] == [True, False] and report.score == 5


@pytest.mark.timeout(30)
async def test_setup_exposes_ssh_at_its_end_only_when_every_script_succeeded(
    sim: tuple[SimulatedCluster, ScriptActivities, list[BoundNode]],
) -> None:
    cluster, activities, nodes = sim
    expose = ExposeInput(session_id=SESSION.session_id, node_id="sim-controlplane")
    assert cluster._store.exposure(SESSION.session_id) is None
    result = await ActivityEnvironment().run(activities.run_setup, SetupInput(
        session=SESSION, lab=make_lab(), nodes=nodes, student_public_key=STUDENT_KEY, expose=expose))
    assert result.endpoint is not None
    # the same endpoint the session's own expose call gets (create-or-get)
    assert result.endpoint == await cluster.expose(SESSION.session_id, "sim-controlplane")

    await cluster.unexpose(SESSION.session_id)
    cluster.set_scenario(Scenario(rules=[ScenarioRule(match="echo marked", exit_code=1)]), node_id="sim-controlplane")
    with pytest.raises(ApplicationError, match="mark-all"):
        await ActivityEnvironment().run(activities.run_setup, SetupInput(
            session=SESSION, lab=make_lab(), nodes=nodes, student_public_key=STUDENT_KEY, expose=expose))
    assert cluster._store.exposure(SESSION.session_id) is None  # a failed setup exposes nothing


@pytest.mark.timeout(30)
async def test_guest_clocks_are_stepped_to_now_and_a_silent_node_is_reported(
    sim: tuple[SimulatedCluster, ScriptActivities, list[BoundNode]],
) -> None:
    import re
    import time

    cluster, activities, nodes = sim
    await cluster.pause_node("sim-node02")  # its sshd does not answer: reported, not raised
    before = time.time()
    result = await ActivityEnvironment().run(activities.step_guest_clocks, ClockStepInput(session=SESSION, nodes=nodes))
    after = time.time()
    assert result.stepped == ["controlplane", "node01"] and list(result.failed) == ["node02"]
    (command,) = cluster.commands("sim-node01")
    assert command == node_commands.step_clock(float(re.search(r"@([0-9.]+)", command).group(1)))  # type: ignore[union-attr]
    stepped_to = float(re.search(r"@([0-9.]+)", command).group(1))  # type: ignore[union-attr]
    assert before <= stepped_to <= after
    assert cluster.commands("sim-node02") == []
