"""Label selectors are pure functions: the emulator ignores them, so they are proven here."""

from __future__ import annotations

import pytest

from cluster.kubevirt import labels as L


def test_free_nodes_selector_names_class_and_state() -> None:
    assert L.free_nodes_selector("cp-1-29") == (
        "app.kubernetes.io/managed-by=labrador,labrador.io/node-class=cp-1-29,labrador.io/state=free"
    )


def test_session_selector() -> None:
    assert L.session_selector("s-bob-123abc") == (
        "app.kubernetes.io/managed-by=labrador,labrador.io/session=s-bob-123abc"
    )


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({L.MANAGED_BY: "labrador", L.NODE_CLASS: "cp", L.STATE: "free"}, True),
        ({L.MANAGED_BY: "labrador", L.NODE_CLASS: "cp", L.STATE: "claimed"}, False),
        ({L.MANAGED_BY: "labrador", L.NODE_CLASS: "worker", L.STATE: "free"}, False),
        ({L.NODE_CLASS: "cp", L.STATE: "free"}, False),
        (None, False),
    ],
)
def test_matches_applies_every_term(labels: dict[str, str] | None, expected: bool) -> None:
    assert L.matches(labels, L.free_nodes_selector("cp")) is expected


def test_selector_round_trips_and_rejects_set_based_terms() -> None:
    labels = {"b": "2", "a": "1"}
    assert L.parse_selector(L.selector_string(labels)) == labels
    with pytest.raises(ValueError, match="notin"):
        L.parse_selector("a notin (x)")
    with pytest.raises(ValueError):
        L.parse_selector("a!=b")


def test_label_values_fit_kubernetes_limits() -> None:
    image = "registry.example.test:5000/very/long/repository/name@sha256:" + "c" * 64
    labels = L.static_node_labels("n" * 63, "cls", "worker", image)
    assert all(len(v) <= 63 and ":" not in v for v in labels.values())
    assert L.image_hash(image) != L.image_hash(image + "x")
