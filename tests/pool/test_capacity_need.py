"""What a start asks the capacity broker for: every VM of the lab, and the cold ones as new. The claim's
call (`capacity_request`) and the workflow's own ask compute it one way (`capacity_need`)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cluster.models import SessionRef
from labs.models import LabNode, Role
from workflows.capacity.models import CapacityLimits
from workflows.models import CapacityAsk, capacity_need, capacity_request

pytestmark = pytest.mark.timeout(10)
GIB = 2**30
NODES = [
    LabNode(name="controlplane", role=Role.CONTROLPLANE, node_class="cp"),
    LabNode(name="node01", role=Role.WORKER, node_class="wk"),
    LabNode(name="node02", role=Role.WORKER, node_class="wk"),
]
MEMORY = {"cp": 4 * GIB, "wk": 2 * GIB}


def test_the_cold_nodes_are_what_the_start_will_create() -> None:
    assert capacity_need(NODES, [True, False, True], MEMORY) == (3, 8 * GIB, 1, 2 * GIB)
    assert capacity_need(NODES, [False, False, False], MEMORY) == (3, 8 * GIB, 3, 8 * GIB)
    assert capacity_need(NODES, [True, True, True], MEMORY) == (3, 8 * GIB, 0, 0)


def test_the_claims_request_carries_the_same_numbers() -> None:
    session = SessionRef(session_id="s-student-abcdef", workflow_id="lab-session/student", run_id="r")
    at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    limits = CapacityLimits(max_vms=10, max_memory_bytes=40 * GIB)
    ask = CapacityAsk(limits=limits, requested_at=at, memory_by_class=MEMORY)
    request = capacity_request(session, NODES, [False, True, False], ask)
    assert (request.vms, request.memory_bytes, request.new_vms, request.new_memory_bytes) == (
        capacity_need(NODES, [False, True, False], MEMORY)
    )
    assert (request.new_vms, request.new_memory_bytes, request.requested_at, request.limits.max_vms) == (
        2, 6 * GIB, at, 10
    )
