"""Setup, checks and teardown activities against real loopback SSH servers (one per lab node)."""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import node_commands
from activities.script_activities import ScriptActivities, SetupProgress
from cluster.models import SessionRef, SshTarget
from cluster.port import NodeNotFound
from cluster.ssh import RetryPolicy, SshRunner
from labrador.settings import Settings
from labs.models import Check, Lab
from tests.sshd import LoopbackSshd
from workflows.models import BoundNode, ChecksInput, SetupInput, SetupResult, TeardownInput

SESSION = SessionRef(session_id="s-abc", workflow_id="lab-alice", run_id="run-1")
FAST = RetryPolicy(attempts=3, initial_backoff=0.1, max_backoff=0.2, connect_timeout=5)


def make_lab(**overrides: Any) -> Lab:
    data: dict[str, Any] = {
        "name": "broken-kubelet",
        "title": "Broken kubelet",
        "nodes": [
            {"name": "controlplane", "role": "controlplane", "class": "cp",
             "labels": {"tier": "control"}},
            {"name": "node01", "role": "worker", "class": "wk", "labels": {"disk": "ssd", "zone": "a"},
             "taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]},
            {"name": "node02", "role": "worker", "class": "wk"},
        ],
        "scripts": {
            "setup": [
                {"name": "break-kubelet", "node": "node01", "run": "echo broken > kubelet.state"},
                {"name": "mark-all", "role": "all", "run": "echo marked > marker"},
            ],
            "teardown": [{"name": "collect", "role": "all", "run": "cat marker"}],
        },
        "checks": [],
    }
    data.update(overrides)
    return Lab.model_validate(data)


class Port:
    """The one cluster-port call these activities make: where to reach a node."""

    def __init__(self, targets: dict[str, SshTarget]) -> None:
        self.targets = targets

    async def ssh_target(self, node_id: str) -> SshTarget:
        if node_id not in self.targets:
            raise NodeNotFound(f"node {node_id} does not exist")
        return self.targets[node_id]


@dataclass
class Cluster:
    servers: dict[str, LoopbackSshd]
    activities: ScriptActivities
    nodes: list[BoundNode]
    heartbeats: list[Any]

    def env(self, details: list[Any] | None = None) -> ActivityEnvironment:
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *args: self.heartbeats.append(args[0] if args else None)
        if details is not None:
            env.info = replace(env.info, heartbeat_details=details)
        return env

    def pinned(self, result: SetupResult) -> list[BoundNode]:
        return [n.model_copy(update={"host_key": result.host_keys[n.name]}) for n in self.nodes]


@pytest.fixture(scope="module")
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def cluster(tmp_path: Path, client_key: asyncssh.SSHKey) -> AsyncIterator[Cluster]:
    authorized = [client_key.export_public_key("openssh").decode()]
    servers: dict[str, LoopbackSshd] = {}
    for index, name in enumerate(["controlplane", "node01", "node02"]):
        servers[name] = await LoopbackSshd(tmp_path / name, authorized, node_id=f"wk-{index}").start()
    port = Port({s.node_id: s.target for s in servers.values()})
    nodes = [
        BoundNode(name=name, node_id=s.node_id, role="controlplane" if name == "controlplane" else "worker",
                  warm=True, address=f"10.0.0.{10 + i}")
        for i, (name, s) in enumerate(servers.items())
    ]
    activities = ScriptActivities(port, Settings(data_dir=tmp_path / "data"),  # type: ignore[arg-type]
                                  runner=SshRunner(client_key, retry=FAST))
    yield Cluster(servers, activities, nodes, [])
    for server in servers.values():
        await server.stop()


STUDENT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJmZXN0dWRlbnRrZXlmb3J0ZXN0aW5nb25seTAxMjM0 student"


@pytest.mark.timeout(30)
async def test_bootstrap_sends_each_node_its_commands_in_order(cluster: Cluster) -> None:
    lab = make_lab()
    result = await cluster.env().run(
        cluster.activities.run_setup,
        SetupInput(session=SESSION, lab=lab, nodes=cluster.nodes, student_public_key=STUDENT_KEY),
    )
    cp, n1, n2 = (cluster.servers[n].commands for n in ("controlplane", "node01", "node02"))
    join = ("kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef "
            "--discovery-token-ca-cert-hash sha256:00ff")
    assert cp == [
        node_commands.install_authorized_key(STUDENT_KEY),
        node_commands.create_session_key("s-abc"),
        node_commands.ssh_config({"node01": "10.0.0.11", "node02": "10.0.0.12"}),
        "kubeadm token create --print-join-command --ttl 30m",
        node_commands.label_and_taint(list(lab.nodes)),
        node_commands.wait_nodes_ready(300),
        "echo marked > marker",
    ]
    session_public_key = (cluster.servers["controlplane"].root / ".ssh/id_ed25519.pub").read_text().strip()
    assert session_public_key.endswith(" labrador-session-s-abc")
    assert n1 == [
        node_commands.install_authorized_key(session_public_key),
        f"hostnamectl set-hostname node01 && {{ test -f /etc/kubernetes/kubelet.conf || {join} --node-name node01; }}",
        "echo broken > kubelet.state",
        "echo marked > marker",
    ]
    assert n2[:2] == [node_commands.install_authorized_key(session_public_key),
                      node_commands.join_cluster(join, "node02")]
    assert n2[2:] == ["echo marked > marker"]
    # what the label step asks kubectl for, as the student's cluster will see it
    labels = cp[4]
    assert "kubectl label node node01 --overwrite disk=ssd zone=a" in labels
    assert "kubectl taint node node01 --overwrite dedicated=db:NoSchedule" in labels
    assert "kubectl label node $(kubectl get nodes -l node-role.kubernetes.io/control-plane" in labels
    # the effects are real on each node's disk
    cp_root = cluster.servers["controlplane"].root
    assert STUDENT_KEY in (cp_root / ".ssh/authorized_keys").read_text()
    for worker in ("node01", "node02"):
        trusted = (cluster.servers[worker].root / ".ssh/authorized_keys").read_text()
        assert session_public_key in trusted and STUDENT_KEY not in trusted
    assert "Host node01\n  HostName 10.0.0.11" in (cp_root / ".ssh/config").read_text()
    assert [(s.node, s.script, s.exit_code) for s in result.scripts] == [
        ("node01", "break-kubelet", 0),
        ("controlplane", "mark-all", 0), ("node01", "mark-all", 0), ("node02", "mark-all", 0),
    ]
    assert result.host_keys == {name: s.public_host_key for name, s in cluster.servers.items()}


@pytest.mark.timeout(30)
async def test_setup_is_idempotent_when_sent_again(cluster: Cluster) -> None:
    lab = make_lab(scripts={})
    data = SetupInput(session=SESSION, lab=lab, nodes=cluster.nodes, student_public_key=STUDENT_KEY)
    await cluster.env().run(cluster.activities.run_setup, data)
    cp_root = cluster.servers["controlplane"].root
    key_before = (cp_root / ".ssh/id_ed25519").read_text()
    await cluster.env().run(cluster.activities.run_setup, data)
    assert (cp_root / ".ssh/authorized_keys").read_text().count(STUDENT_KEY) == 1
    assert (cp_root / ".ssh/id_ed25519").read_text() == key_before
    assert (cp_root / ".ssh/config").read_text().count("# BEGIN labrador") == 1


@pytest.mark.timeout(30)
async def test_single_node_lab_without_bootstrap_only_installs_the_student_key(cluster: Cluster) -> None:
    lab = make_lab(bootstrap="none", nodes=[{"name": "controlplane", "role": "controlplane", "class": "cp"}],
                   scripts={"setup": [{"name": "hello", "run": "echo hello"}]})
    result = await cluster.env().run(
        cluster.activities.run_setup,
        SetupInput(session=SESSION, lab=lab, nodes=cluster.nodes[:1], student_public_key=STUDENT_KEY),
    )
    assert cluster.servers["controlplane"].commands == [node_commands.install_authorized_key(STUDENT_KEY),
                                                        "echo hello"]
    assert result.scripts[0].output.strip() == "hello"


@pytest.mark.timeout(30)
async def test_failing_setup_script_fails_non_retryably_with_its_output(cluster: Cluster) -> None:
    lab = make_lab(bootstrap="none", scripts={"setup": [
        {"name": "first", "node": "node01", "run": "echo first-ok"},
        {"name": "break-etcd", "node": "node01", "run": "echo 'etcd: cannot find data dir' >&2; exit 4"},
        {"name": "never", "node": "node01", "run": "echo never"},
    ]})
    with pytest.raises(ApplicationError) as info:
        await cluster.env().run(
            cluster.activities.run_setup,
            SetupInput(session=SESSION, lab=lab, nodes=cluster.nodes, student_public_key=STUDENT_KEY),
        )
    error = info.value
    assert error.non_retryable and error.type == "SetupScriptFailed"
    assert "'break-etcd' failed on node 'node01' (exit code 4)" in error.message
    assert "etcd: cannot find data dir" in error.message
    assert "echo never" not in cluster.servers["node01"].commands


@pytest.mark.timeout(30)
async def test_failing_join_names_node_and_step(cluster: Cluster) -> None:
    kubeadm = cluster.servers["node02"].bin / "kubeadm"
    kubeadm.write_text("#!/bin/sh\necho 'error execution phase preflight: port 10250 in use' >&2\nexit 1\n")
    with pytest.raises(ApplicationError, match=r"(?s)'kubeadm-join' failed on node 'node02' \(exit code 1\).*10250"):
        await cluster.env().run(
            cluster.activities.run_setup,
            SetupInput(session=SESSION, lab=make_lab(), nodes=cluster.nodes, student_public_key=STUDENT_KEY),
        )


@pytest.mark.timeout(30)
async def test_retried_setup_resumes_without_rerunning_finished_scripts(cluster: Cluster) -> None:
    lab = make_lab(bootstrap="none", nodes=[{"name": "controlplane", "role": "controlplane", "class": "cp"}],
                   scripts={"setup": [{"name": "once", "run": "echo x >> once.log"},
                                      {"name": "then", "run": "echo y >> then.log"}]})
    cp = cluster.servers["controlplane"]
    (cp.root / "once.log").write_text("x\n")  # the previous attempt ran `once`, then the worker died
    previous = SetupProgress(done=["setup:once:controlplane"], host_keys={"controlplane": cp.public_host_key})
    result = await cluster.env(details=[previous.model_dump(mode="json")]).run(
        cluster.activities.run_setup,
        SetupInput(session=SESSION, lab=lab, nodes=cluster.nodes[:1], student_public_key=STUDENT_KEY),
    )
    assert (cp.root / "once.log").read_text() == "x\n"
    assert (cp.root / "then.log").read_text() == "y\n"
    assert [s.script for s in result.scripts] == ["then"]
    assert isinstance(cluster.heartbeats[-1], SetupProgress)
    assert "setup:then:controlplane" in cluster.heartbeats[-1].done


@pytest.mark.timeout(30)
async def test_setup_refuses_a_node_whose_host_key_changed(cluster: Cluster) -> None:
    impostor_key = asyncssh.generate_private_key("ssh-ed25519")
    pinned = [n.model_copy(update={"host_key": " ".join(
        impostor_key.export_public_key("openssh").decode().split()[:2])}) if n.name == "controlplane" else n
        for n in cluster.nodes]
    with pytest.raises(ApplicationError) as info:
        await cluster.env().run(
            cluster.activities.run_setup,
            SetupInput(session=SESSION, lab=make_lab(), nodes=pinned, student_public_key=STUDENT_KEY),
        )
    assert info.value.type == "HostKeyMismatch" and info.value.non_retryable
    assert "'student-key' on node 'controlplane'" in info.value.message
    assert cluster.servers["controlplane"].commands == []


def check(name: str, run: str, **kw: Any) -> Check:
    return Check.model_validate({"name": name, "run": run, **kw})


@pytest.mark.timeout(30)
async def test_checks_score_and_are_never_retried(cluster: Cluster) -> None:
    checks = [
        check("kubelet-running", "echo active", expect={"stdout": "^active$"}, points=3),
        check("exit-only", "true", points=2),
        check("wrong-output", "echo inactive", expect={"stdout": "^active$"}, points=5),
        check("fails", "echo nope; exit 1", node="node01", points=4),
        check("expects-failure", "exit 2", node="node02", expect={"exit_code": 2, "stdout": None}),
        check("stderr-not-matched", "echo active >&2", expect={"stdout": "active"}, points=1),
        check("slow", "sleep 10", timeout="1s", node="node01", points=1),
        check("ghost", "true", node="node09", points=7),
    ]
    report = await cluster.env().run(cluster.activities.run_checks,
                                     ChecksInput(session=SESSION, checks=checks, nodes=cluster.nodes))
    by_name = {r.name: r for r in report.results}
    assert [r.name for r in report.results] == [c.name for c in checks]
    assert {n for n, r in by_name.items() if r.passed} == {"kubelet-running", "exit-only", "expects-failure"}
    assert report.score == 3 + 2 + 1 and report.max_score == 3 + 2 + 5 + 4 + 1 + 1 + 1 + 7
    assert by_name["fails"].points == 0 and by_name["fails"].max_points == 4
    assert "nope" in by_name["fails"].output_excerpt
    assert "timed out" in by_name["slow"].output_excerpt
    assert "node 'node09' is not part of this session" in by_name["ghost"].output_excerpt
    assert report.checked_at is not None and by_name["slow"].duration_seconds >= 1
    assert cluster.servers["node01"].commands.count("echo nope; exit 1") == 1  # ran once, not retried


@pytest.mark.timeout(30)
async def test_checks_on_a_node_with_a_changed_host_key_fail_without_running(cluster: Cluster) -> None:
    other = " ".join(asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().split()[:2])
    nodes = [n.model_copy(update={"host_key": other}) for n in cluster.nodes]
    report = await cluster.env().run(cluster.activities.run_checks, ChecksInput(
        session=SESSION, checks=[check("c", "true")], nodes=nodes))
    assert not report.results[0].passed and "host key" in report.results[0].output_excerpt
    assert cluster.servers["controlplane"].commands == []


@pytest.mark.timeout(30)
async def test_checks_use_the_keys_pinned_at_setup(cluster: Cluster) -> None:
    lab = make_lab(scripts={})
    setup = await cluster.env().run(cluster.activities.run_setup, SetupInput(
        session=SESSION, lab=lab, nodes=cluster.nodes, student_public_key=STUDENT_KEY))
    report = await cluster.env().run(cluster.activities.run_checks, ChecksInput(
        session=SESSION, checks=[check("hostname", "cat marker 2>/dev/null || echo ok", node="node02")],
        nodes=cluster.pinned(setup)))
    assert report.results[0].passed and report.score == 1


@pytest.mark.timeout(30)
async def test_teardown_is_best_effort(cluster: Cluster) -> None:
    lab = make_lab()
    await cluster.servers["node02"].stop()  # one node is already gone
    result = await cluster.env().run(cluster.activities.run_teardown_scripts, TeardownInput(
        session=SESSION, scripts=[*lab.scripts.teardown,
                                  *make_lab(scripts={"teardown": [{"name": "fail", "run": "exit 9"}]}
                                            ).scripts.teardown],
        nodes=cluster.nodes))
    rows = [(s.node, s.script, s.exit_code) for s in result.scripts]
    assert rows == [("controlplane", "collect", 1), ("node01", "collect", 1), ("node02", "collect", None),
                    ("controlplane", "fail", 9)]
    assert "not run" in result.scripts[2].output


@pytest.mark.timeout(30)
async def test_session_credentials_are_a_fresh_ed25519_pair(cluster: Cluster) -> None:
    first = await cluster.env().run(cluster.activities.create_session_credentials, SESSION)
    second = await cluster.env().run(cluster.activities.create_session_credentials, SESSION)
    assert first.private_key != second.private_key
    key = asyncssh.import_private_key(first.private_key)
    assert key.algorithm == b"ssh-ed25519"
    assert key.export_public_key("openssh").decode().split()[:2] == first.public_key.split()[:2]


def test_join_command_parsing_rejects_noise() -> None:
    assert node_commands.parse_join_command("W1124 warning\nkubeadm join 1.2.3.4:6443 --token a.b \n") == (
        "kubeadm join 1.2.3.4:6443 --token a.b")
    with pytest.raises(ValueError, match="no 'kubeadm join'"):
        node_commands.parse_join_command("error: not a control plane")
    with pytest.raises(ValueError):
        node_commands.join_cluster("rm -rf /; kubeadm join x", "node01")


def test_commands_quote_what_they_embed() -> None:
    command = node_commands.install_authorized_key("ssh-ed25519 AAAA it's;$(reboot)")
    assert shlex.quote("ssh-ed25519 AAAA it's;$(reboot)") in command


@pytest.mark.timeout(30)
async def test_checks_on_an_unreachable_node_fail_without_holding_the_others(cluster: Cluster) -> None:
    await cluster.servers["node02"].stop()  # the student broke node02's network
    checks = [check(f"n2-{i}", "true", node="node02", points=2) for i in range(6)] + [check("cp", "true", points=1)]
    report = await cluster.env().run(cluster.activities.run_checks,
                                     ChecksInput(session=SESSION, checks=checks, nodes=cluster.nodes))
    results = {r.name: r for r in report.results}
    assert results["cp"].passed and report.score == 1 and report.max_score == 13
    assert all(not results[f"n2-{i}"].passed for i in range(6))
    assert all("node 'node02'" in results[f"n2-{i}"].output_excerpt for i in range(6))
    assert max(r.duration_seconds for r in report.results) < 5  # gave up after the short check retries
