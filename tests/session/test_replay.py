"""Replay every recorded session history against today's workflow code.

A change that would break running labs (a different command sequence for the same history) fails here.
Incompatible changes go behind `workflow.patched` (docs/session.md). Re-record with
`LABRADOR_RECORD_HISTORIES=1 python -m pytest tests/session/test_time_rules.py` only when adding histories.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.lab_session import LabSessionWorkflow

HISTORIES = sorted((Path(__file__).resolve().parents[1] / "histories").glob("*.json"))


def test_histories_are_recorded() -> None:
    assert len(HISTORIES) >= 5, "tests/histories lost its recorded sessions"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_session_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"lab-session/{path.stem}", path.read_text())  # noqa: ASYNC240
    replayer = Replayer(workflows=[LabSessionWorkflow], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_no_recorded_history_holds_a_private_key() -> None:
    """Histories are recorded with stand-in keys (tests/session/fakes.py fake_key_pair); a real key pair,
    even a test's throwaway one, must not land in the repo."""
    leaked = []
    for path in HISTORIES:
        history = json.loads(path.read_text())
        for event in history["events"]:
            for payload in _payloads(event):
                if b"PRIVATE KEY" in base64.b64decode(payload.get("data", "")):
                    leaked.append(f"{path.name} event {event['eventId']}")
    assert leaked == []


def _payloads(node: object) -> list[dict[str, str]]:
    if isinstance(node, dict):
        found = [node] if "data" in node and "metadata" in node else []
        for value in node.values():
            found += _payloads(value)
        return found
    if isinstance(node, list):
        return [p for value in node for p in _payloads(value)]
    return []
