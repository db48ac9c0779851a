"""The shell commands the platform sends to lab nodes during setup. Pure functions: text in, text out.

Every command is idempotent (safe to re-send when an activity is retried after a worker crash) and
quotes every value it embeds. They are POSIX sh, run as root by the node's sshd; `~` is root's home.
"""

from __future__ import annotations

import re
import shlex

from labs.models import LabNode, Role

KUBECONFIG = "export KUBECONFIG=/etc/kubernetes/admin.conf"
CONTROLPLANE_NODE_NAME = (
    "$(kubectl get nodes -l node-role.kubernetes.io/control-plane -o jsonpath='{.items[0].metadata.name}')"
)
JOIN_COMMAND_RE = re.compile(r"^kubeadm join \S+ .*$", re.MULTILINE)


def install_authorized_key(public_key: str) -> str:
    """Trust `public_key` for root (the student's key on the control plane, the session key on workers)."""
    line = shlex.quote(" ".join(public_key.split()))
    return (
        "umask 077 && mkdir -p ~/.ssh && touch ~/.ssh/authorized_keys && "
        f"{{ grep -qxF {line} ~/.ssh/authorized_keys || echo {line} >> ~/.ssh/authorized_keys; }}"
    )


def session_key_comment(session_id: str) -> str:
    return f"labrador-session-{session_id}"


def create_session_key(session_id: str) -> str:
    """Root's default key on the control plane, fresh for this session (an image may ship one: it is
    replaced unless it already is this session's). Prints the public half."""
    comment = shlex.quote(session_key_comment(session_id))
    return (
        "umask 077 && mkdir -p ~/.ssh && "
        f"if ! grep -qs -- {shlex.quote(' ' + session_key_comment(session_id) + '$')} ~/.ssh/id_ed25519.pub; then "
        "rm -f ~/.ssh/id_ed25519 ~/.ssh/id_ed25519.pub && "
        f"ssh-keygen -q -t ed25519 -N '' -C {comment} -f ~/.ssh/id_ed25519; fi && "
        "cat ~/.ssh/id_ed25519.pub"
    )


def parse_public_key(output: str) -> str:
    """The last line of `output` that is an OpenSSH public key; ValueError when there is none."""
    import asyncssh  # only here: node_commands stays importable without the SSH library loaded

    for line in reversed(output.strip().splitlines()):
        try:
            asyncssh.import_public_key(line.strip())
        except (asyncssh.KeyImportError, ValueError):
            continue
        return " ".join(line.split())
    raise ValueError("the control plane printed no public key")


def ssh_config(hosts: dict[str, str]) -> str:
    """`ssh node01` from the control plane: a marked block in root's ~/.ssh/config, replaced each time."""
    lines = ["# BEGIN labrador"]
    for name, address in hosts.items():
        lines += [f"Host {name}", f"  HostName {address}", "  User root", "  StrictHostKeyChecking accept-new"]
    lines.append("# END labrador")
    block = " ".join(shlex.quote(line) for line in lines)
    return (
        "umask 077 && mkdir -p ~/.ssh && touch ~/.ssh/config && "
        "sed -i '/^# BEGIN labrador$/,/^# END labrador$/d' ~/.ssh/config && "
        f"printf '%s\\n' {block} >> ~/.ssh/config"
    )


def print_join_command() -> str:
    return "kubeadm token create --print-join-command --ttl 30m"


def parse_join_command(output: str) -> str:
    """The `kubeadm join ...` line from the control plane's output; ValueError when absent."""
    match = JOIN_COMMAND_RE.search(output)
    if match is None:
        raise ValueError("the control plane printed no 'kubeadm join' command")
    return match.group(0).strip()


def join_cluster(join_command: str, node_name: str) -> str:
    """Worker: take the lab's node name and join; skipped when the kubelet already joined (retry)."""
    if not JOIN_COMMAND_RE.fullmatch(join_command):
        raise ValueError(f"not a kubeadm join command: {join_command[:40]!r}")
    name = shlex.quote(node_name)
    return (
        f"hostnamectl set-hostname {name} && "
        f"{{ test -f /etc/kubernetes/kubelet.conf || {join_command} --node-name {name}; }}"
    )


def _node_ref(node: LabNode) -> str:
    return CONTROLPLANE_NODE_NAME if node.role == Role.CONTROLPLANE else shlex.quote(node.name)


def label_and_taint(nodes: list[LabNode]) -> str | None:
    """Control plane: wait for each worker to register, then apply the lab's labels and taints."""
    parts = [KUBECONFIG]
    for node in nodes:
        ref = _node_ref(node)
        if node.role != Role.CONTROLPLANE:
            parts.append(
                f"for i in $(seq 90); do kubectl get node {ref} >/dev/null 2>&1 && break; sleep 2; done"
            )
        if node.labels:
            pairs = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(node.labels.items()))
            parts.append(f"kubectl label node {ref} --overwrite {pairs}")
        for taint in node.taints:
            spec = f"{taint.key}={taint.value}:{taint.effect}" if taint.value else f"{taint.key}:{taint.effect}"
            parts.append(f"kubectl taint node {ref} --overwrite {shlex.quote(spec)}")
    if not any(n.labels or n.taints or n.role != Role.CONTROLPLANE for n in nodes):
        return None
    return " && ".join(parts)


def wait_nodes_ready(timeout_seconds: int) -> str:
    return f"{KUBECONFIG} && kubectl wait --for=condition=Ready node --all --timeout={timeout_seconds}s"


def step_clock(epoch_seconds: float) -> str:
    """Set the guest clock after an unpause (a paused guest's clock lags by the paused time and no
    guest agent corrects it). chrony, if it runs, is told to step too, else it would slew for hours."""
    return (f"date -u -s @{epoch_seconds:.3f} >/dev/null"
            " && { chronyc -a makestep >/dev/null 2>&1 || true; }")


# What a simulated node (cluster.simulated, which records commands and answers success with no
# output by default) must print for the platform's setup steps to succeed: rules in the simulated
# backend's scenario format. Use them as its default scenario in `labrador dev` and in tests.
SIMULATED_PLATFORM_ANSWERS: list[dict[str, str]] = [
    {
        "match": r"^kubeadm token create --print-join-command",
        "stdout": "kubeadm join 10.244.0.2:6443 --token simula.tedtoken000000 "
        "--discovery-token-ca-cert-hash sha256:" + "0" * 64 + "\n",
    },
    {
        "match": r"ssh-keygen -q -t ed25519 .*cat ~/\.ssh/id_ed25519\.pub$",
        "stdout": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAfU2RQbOkTBez34KBSBCZ4u6PTrF4bc/lowmJPQ6W0B "
        "labrador-session-simulated\n",
    },
]
