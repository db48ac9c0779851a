"""The node-health watch while the lab runs (a node down past `health_grace` fails the session)."""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from cluster.models import NodePhase
    from labs.models import format_duration
    from workflows.models import BoundNode
    from workflows.session.calls import HEALTH_CALL
    from workflows.session.failures import SessionFailed
    from workflows.session.patches import PATCH_LOCAL_FAILURES_CAUGHT, session_patched
    from workflows.session.steps import SessionSteps


class NodeHealthWatch(SessionSteps):
    """Looks at every node each `health_interval`; waits through a pause."""

    async def _watch_node_health(self) -> None:
        """Every `health_interval`: a node that is not ready for longer than `health_grace` (or is gone
        for good) fails the session; the status shows the problem meanwhile."""
        timings = self._input.timings
        down_since: dict[str, datetime] = {}
        while True:
            await workflow.sleep(timings.health_interval, summary="node health")
            if self._suspended():  # a paused guest fails every probe: wait until it runs again
                await workflow.wait_condition(lambda: not self._suspended())
                down_since.clear()
                continue
            generation = self._session.session_id
            try:
                statuses = await self._all(self._node_status(node, HEALTH_CALL) for node in self._nodes)
            except ActivityError:
                continue  # the cluster API did not answer: not evidence against the nodes
            except ApplicationError:  # how a local activity's failure arrives
                if not session_patched(PATCH_LOCAL_FAILURES_CAUGHT):
                    raise  # runs from before: this ended the health watch
                continue
            if self._suspended() or generation != self._session.session_id:
                continue  # paused or reset while we looked: the answers are about other nodes now
            now = workflow.now()
            problems: list[str] = []
            nodes: list[BoundNode] = []
            for node, status in zip(self._nodes, statuses, strict=True):
                healthy = status.phase == NodePhase.READY
                nodes.append(node.model_copy(update={"healthy": healthy}))
                if healthy:
                    down_since.pop(node.name, None)
                    continue
                since = down_since.setdefault(node.name, now)
                problem = f"node {node.name} is {status.phase}" + (f" ({status.reason})" if status.reason else "")
                problems.append(f"{problem} since {since:%H:%M:%S} UTC")
                gone_for_good = status.phase in (NodePhase.FAILED, NodePhase.MISSING)
                if gone_for_good or now - since >= timings.health_grace:
                    self._health_failure = SessionFailed(
                        f"{problem}, not recovered" if not gone_for_good else problem,
                        f"{problem}; the session cannot continue (grace {format_duration(timings.health_grace)})",
                    )
            self._nodes = nodes
            changed = (self._health_problem is not None) != bool(problems)
            self._health_problem = "; ".join(problems) or None
            if changed:
                self._update_details()
            if self._health_failure is not None:
                self._version += 1
                return
