"""The `workflow.patched` IDs of the session workflow (docs/session.md "Replay safety").

Runs that took the old path keep it on replay; each ID says which change it guards. Never rename one.
Session code asks `session_patched(ID)`, not `workflow.patched`: every patch marker costs a history event
and an upsert of the TemporalChangeVersion search attribute (a Visibility write), so a run that took
LEAN_START_PATCH (the newest) has every earlier change and records none of their markers.
"""

from temporalio import workflow

# workflow.patched ID: the capacity path with ticket numbers (admit by update, claim and warm-node
# deletes bounded by the provisioning_overdue budget, `end` raced against them). Sessions started
# before it replay the old path (tests/histories/capacity-v1-*.json).
CAPACITY_TICKETS_PATCH = "capacity-tickets"
# ... and then: the claim, deletes and broker calls as quick local attempts + a regular activity with a
# schedule-to-close (the local activities' schedule-to-close of the first version held the workflow
# task while they retried, so `end` waited; tests/histories/capacity-tickets-v1-*.json replay it).
CAPACITY_BOUNDED_PATCH = "capacity-bounded-calls"
# Patches (docs/session.md "Replay safety"): runs that took the old path keep it on replay.
PATCH_TEARDOWN_ACTIVITIES = "teardown-as-regular-activities"
PATCH_BOUNDED_LOCAL_RETRIES = "bounded-local-retries"
PATCH_ONE_CHECK_AT_A_TIME = "one-check-at-a-time"
PATCH_LOCAL_FAILURES_CAUGHT = "local-activity-failures-caught"
# Marks the runs that used pause/resume/reset (recorded the first time one of them runs). Runs that
# never did take exactly the commands they took before these messages existed.
PAUSE_PATCH = "pause-resume-reset"
# The node-health watch waits through a pause instead of being cancelled and restarted (cancelling it
# while its node_health call runs, next to an update's commands, was refused by the test server).
HEALTH_WAITS_PATCH = "pause-health-waits"
# workflow.patched ID: runs that started before webhook events (child starts, the lab.expiring timer).
WEBHOOK_PATCH = "webhook-events"
# The lean start: provision + readiness look + wiring + the key pair in one local activity
# (`prepare_nodes`) instead of one per node and step, SSH exposed by `run_setup` at its end, the phase
# search attribute upserted once per workflow task with its last value (most phases of a start pass
# within one task), and no marker for the patches above (`session_patched`). Runs started before it
# replay their per-step calls, per-phase upserts and markers.
LEAN_START_PATCH = "lean-start"

# Flows (`LabSessionInput.flow`, set by the starter): versions of the session's command sequence chosen
# at the start, in the input, instead of by a marker (no history event, no TemporalChangeVersion
# upsert: a Visibility write per start). A run's input is in its history, so its replay takes the same
# flow. QUIET_FLOW: the lean start without its marker, and the phases before ready shown in Visibility
# only once they last `timings.phase_shown_after` (workflows/session/state.py). Runs with flow 0 (started by
# an older client, and every history recorded before flows) decide by the markers above.
QUIET_FLOW = 1
# CLAIM_PREPARES_FLOW: the quiet flow, and the first claim asks `claim_and_prepare_nodes`, which also
# prepares the nodes when the pool had all of them (a warm start: one local activity less).
CLAIM_PREPARES_FLOW = 2
# CLAIM_ASKS_FLOW: flow 2, and under a capacity cap the same first claim also asks the capacity broker
# for the cold nodes when the pool had too few (a cold start: one local activity less, `pool_admit_capacity`).
CLAIM_ASKS_FLOW = 3
CURRENT_FLOW = CLAIM_ASKS_FLOW


def session_patched(patch_id: str) -> bool:
    """`workflow.patched` for the session's patches older than LEAN_START_PATCH: true without a marker
    in a run that took the lean start (recorded first, at the run's first phase)."""
    lean_start = getattr(workflow.instance(), "_lean_start", None)
    if lean_start is not None and lean_start():
        return True
    return workflow.patched(patch_id)
