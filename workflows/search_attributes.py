"""Search attributes the Web UI filters lab sessions by (all keywords)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

STUDENT_ID = SearchAttributeKey.for_keyword("StudentId")
LAB_NAME = SearchAttributeKey.for_keyword("LabName")
LAB_PHASE = SearchAttributeKey.for_keyword("LabPhase")

ALL = (STUDENT_ID, LAB_NAME, LAB_PHASE)
