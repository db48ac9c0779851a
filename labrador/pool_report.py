"""What `labrador pool status` and the HTTP API's pool route answer: one report, built here.

Apart from the CLI so the API (labrador/api) does not import the CLI.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError

from labrador import schedules
from labrador.settings import Settings
from workflows.pool_models import (
    POOL_STATUS_WORKFLOW_PREFIX,
    CapacityState,
    PoolStatus,
    PoolStatusInput,
    capacity_broker_id,
)


async def pool_status(client: Client, settings: Settings) -> dict[str, Any]:
    refill_input = await schedules.current_refill_input(client)
    last = await schedules.last_refill_result(client)
    request = PoolStatusInput(
        refill=refill_input or schedules.refill_input_from_settings(settings),
        targets={name: report.target for name, report in (last.classes.items() if last else [])},
    )
    status: PoolStatus = await client.execute_workflow(
        "PoolStatusWorkflow", request, id=f"{POOL_STATUS_WORKFLOW_PREFIX}-{uuid.uuid4().hex[:8]}",
        task_queue=settings.task_queue, result_type=PoolStatus, execution_timeout=timedelta(seconds=60),
    )
    try:
        broker = await client.get_workflow_handle(capacity_broker_id(settings.task_queue)).query(
            "state", result_type=CapacityState
        )
        status = status.model_copy(update={"queue": broker.queue})
    except RPCError:
        pass  # no broker yet: nobody ever queued
    data = status.model_dump(mode="json")
    overrides = (refill_input.sizing if refill_input else {})
    for name, cls in data["classes"].items():
        report = last.classes.get(name) if last else None
        # Why the target is what it is, from the refill that set it (workflows/pool_sizing.py).
        cls["why"] = report.target_reason if report and report.target_reason else None
        cls["min"] = report.min_size if report else None
        cls["max"] = report.max_size if report else None
        override = overrides.get(name)
        cls["override"] = None if override is None else {"min": override.min_size, "max": override.max_size}
    return {
        "schedule": {"exists": refill_input is not None, "paused": await schedules.is_paused(client)},
        "last_refill": None if last is None else {
            "finished_at": last.finished_at, "leaks": last.leaks, "capped_reason": last.capped_reason,
        },
        **data,
    }
