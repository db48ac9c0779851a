"""Pause on the simulated cluster: the state is in the SQLite file, so a restarted worker finds the
node still paused (its SSH still silent) and unpausing it there brings SSH back."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from cluster.models import NodePhase
from cluster.simulated import SimulatedCluster
from tests.cluster.conftest import spec

pytestmark = pytest.mark.timeout(30)


async def test_a_paused_node_stays_paused_across_a_restart(state_file: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    first = SimulatedCluster(state_file)
    await first.provision(spec("cp", session="s1"))
    target = await first.ssh_target("cp")
    exposed = await first.expose("s1", "cp")
    await first.pause_node("cp")
    await first.aclose()

    second = SimulatedCluster(state_file)
    try:
        assert (await second.node_status("cp")).phase == NodePhase.PAUSED  # restores listeners first
        for port in (target.port, exposed.port):
            with pytest.raises(OSError):
                await asyncssh.connect("127.0.0.1", port, username="root", client_keys=[key], known_hosts=None)
        await second.unpause_node("cp")
        assert (await second.node_status("cp")).phase == NodePhase.READY
        again = await second.ssh_target("cp")
        for port in (again.port, exposed.port):
            async with asyncssh.connect("127.0.0.1", port, username="root", client_keys=[key],
                                        known_hosts=None) as conn:
                assert (await conn.run("true", check=True)).exit_status == 0
    finally:
        await second.aclose()
