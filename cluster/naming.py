"""The one place where IDs become Kubernetes names and Temporal workflow IDs.

Pure functions only: workflows import this module.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
# Always used with fullmatch: `$` alone also matches before a final newline ("carol\n").
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_STUDENT_RE = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,127}")
_LEGACY_STUDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
STUDENT_ID_MAX = 128


class InvalidName(ValueError):
    """A name or ID that cannot be used; the message names the field and the value."""


def short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def is_dns_label(value: str) -> bool:
    return len(value) <= DNS_LABEL_MAX and bool(_DNS_LABEL_RE.fullmatch(value))


def dns_label(*parts: str, max_len: int = DNS_LABEL_MAX) -> str:
    """Join parts into a valid DNS-1123 label.

    Lowercases, replaces anything outside [a-z0-9-] by '-', and when the result must be shortened
    (or was changed) keeps it unique by appending a hash of the original text.
    """
    original = "-".join(p for p in parts if p)
    cleaned = re.sub(r"[^a-z0-9-]+", "-", original.lower())
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-")
    if cleaned == original and len(cleaned) <= max_len and cleaned:
        return cleaned
    suffix = short_hash(original, 6)
    head = cleaned[: max_len - len(suffix) - 1].strip("-")
    return f"{head}-{suffix}" if head else f"x-{suffix}"[:max_len]


def validate_student_id(student_id: str, *, existing: bool = False) -> str:
    """Reject control characters, whitespace, overlong, empty or (for a new lab) upper-case IDs
    before they reach any name.

    Student IDs are lower case: `ALICE` and `alice` would otherwise be two students holding two labs,
    and case-folding instead would change the workflow IDs of labs already running. `existing=True`
    (status, end, extend, check of a lab that may have been started before this rule) still accepts
    upper case so such a lab can be reached until it ends.
    """
    if not isinstance(student_id, str) or not student_id:
        raise InvalidName("student: must be a non-empty string")
    if len(student_id) > STUDENT_ID_MAX:
        raise InvalidName(f"student: {student_id[:20]!r}... is longer than {STUDENT_ID_MAX} characters")
    if (_LEGACY_STUDENT_RE if existing else _STUDENT_RE).fullmatch(student_id):
        return student_id
    if _LEGACY_STUDENT_RE.fullmatch(student_id):
        raise InvalidName(
            f"student: {student_id!r} has upper-case letters; student IDs are lower case "
            f"(use {student_id.lower()!r})"
        )
    raise InvalidName(
        f"student: {student_id!r} may only contain lower-case letters, digits and . _ @ + - "
        "(no spaces, newlines or control characters) and must start with a letter or digit"
    )


def session_workflow_id(student_id: str) -> str:
    """One workflow ID per student: Temporal's ID conflict policy enforces one active lab per student."""
    return f"lab-session/{validate_student_id(student_id, existing=True)}"


def session_id(student_id: str, run_id: str) -> str:
    """A session ID unique per run, safe for Kubernetes names and label values (<= 40 chars)."""
    return dns_label("s", student_id[:24], short_hash(run_id, 6), max_len=40)


def node_namespace(node_id: str) -> str:
    return dns_label("lab", node_id)
