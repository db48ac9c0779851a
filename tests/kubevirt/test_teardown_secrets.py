"""Secrets at rest in the cluster: a session's Secrets go with its teardown, and none of them
holds a private key (the student's key never reaches the cluster API; the per-node Secret holds
the platform's public key only)."""

from __future__ import annotations

import pytest

from cluster.kubevirt.backend import KubeVirtCluster
from cluster.models import SessionWiring
from tests.kubevirt.emulator import SECRETS, LabEmulator
from tests.kubevirt.test_backend import claimed_session, ref

pytestmark = pytest.mark.timeout(30)


async def test_teardown_removes_the_sessions_secrets(cluster: KubeVirtCluster, emulator: LabEmulator) -> None:
    await claimed_session(cluster, "s1")
    await claimed_session(cluster, "s2")
    await cluster.wire(SessionWiring(session=ref("s1"), controlplane="s1-cp", workers=["s1-w1"]))
    await cluster.expose("s1", "s1-cp")
    secrets = [key for key in emulator.live_keys(SECRETS) if (key[1] or "").startswith("lab-s1-")]
    assert len(secrets) == 2  # one per node: the key KubeVirt's accessCredentials read
    for key in secrets:
        secret = emulator.live(*key)
        assert secret is not None
        values = " ".join(str(v) for v in {**secret.get("data", {}), **secret.get("stringData", {})}.values())
        assert "PRIVATE KEY" not in values and values.startswith("ssh-ed25519 ")

    await cluster.unexpose("s1")
    await cluster.unwire("s1")
    await cluster.release("s1")
    assert not [key for key in emulator.live_keys(SECRETS) if (key[1] or "").startswith("lab-s1-")]
    assert [key for key in emulator.live_keys(SECRETS) if (key[1] or "").startswith("lab-s2-")]  # not the others'
