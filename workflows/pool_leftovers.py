"""Which sessions hold something in the cluster, from an inventory: what the leak collection asks
Temporal about (has this run ended?) and what it would collect of each. Pure: the refill workflow's
pre-`pool-view` path and the `pool_view` activity both use it."""

from __future__ import annotations

from cluster.models import Inventory, NodeState
from workflows.pool_models import SessionRunRef


def sessions_in(inventory: Inventory) -> tuple[dict[str, SessionRunRef], dict[str, set[str]]]:
    """(run reference by session ID, kinds of resources it holds by session ID): every session that
    has claimed nodes ("node") or leftover objects. A run ID from the nodes is kept over a leftover's."""
    refs: dict[str, SessionRunRef] = {}
    kinds: dict[str, set[str]] = {}
    for node in inventory.nodes:
        if node.state == NodeState.CLAIMED and node.session is not None:
            refs[node.session.session_id] = SessionRunRef(
                session_id=node.session.session_id, workflow_id=node.session.workflow_id,
                run_id=node.session.run_id,
            )
            kinds.setdefault(node.session.session_id, set()).add("node")
    for leftover in inventory.sessions:
        known = refs.get(leftover.session_id)
        if known is None or known.run_id is None:
            refs[leftover.session_id] = SessionRunRef(
                session_id=leftover.session_id, workflow_id=leftover.workflow_id, run_id=leftover.run_id
            )
        kinds.setdefault(leftover.session_id, set()).update(leftover.kinds)
    return refs, kinds
