from cluster.naming import dns_label, session_id, session_workflow_id


def test_dns_label_keeps_valid_names_and_sanitises_others() -> None:
    assert dns_label("cp", "abc") == "cp-abc"
    weird = dns_label("Student_ONE@example.com")
    assert weird != dns_label("student-one-example-com")
    assert len(dns_label("x" * 200)) <= 63


def test_session_ids_differ_per_run() -> None:
    assert session_id("alice", "run-1") != session_id("alice", "run-2")
    assert session_workflow_id("alice") == "lab-session/alice"
