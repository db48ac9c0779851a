"""The HTTP API as an app uses it: real uvicorn on loopback, aiohttp, the dev server, worker, simulated cluster."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import pytest
from openapi_spec_validator import validate

from labrador.settings import Settings

from .conftest import ADMIN_KEY, APP_KEY, APP_KEY_2, Api, Stack, free_port

pytestmark = pytest.mark.timeout(90)
PROBLEM = "application/problem+json"


def student() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


async def test_health_and_the_openapi_document_need_no_key(api: Api) -> None:
    assert (await api.call("GET", "/healthz", key=None))[:2] == (200, {"status": "ok"})
    assert (await api.call("GET", "/readyz", key=None))[:2] == (200, {"status": "ok"})
    status, spec, _ = await api.call("GET", "/openapi.json", key=None)
    assert status == 200 and spec["openapi"].startswith("3.1")
    validate(spec)  # a valid OpenAPI 3.1 document (openapi-spec-validator)
    start = spec["components"]["schemas"]["StartSessionRequest"]["properties"]["wait_seconds"]
    assert any(option.get("maximum") == 300 for option in start["anyOf"])
    for path in ("/v1/sessions", "/v1/sessions/{student_id}", "/v1/sessions/{student_id}/extend",
                 "/v1/sessions/{student_id}/check", "/v1/sessions/{student_id}/end", "/v1/labs",
                 "/v1/node-classes", "/v1/pool"):
        assert path in spec["paths"], path
    assert spec["paths"]["/v1/sessions"]["post"]["security"] == [{"HTTPBearer": []}]


async def test_keys_and_scopes(api: Api) -> None:
    status, body, headers = await api.call("GET", "/v1/labs", key=None)
    assert status == 401 and headers["Content-Type"] == PROBLEM and headers["WWW-Authenticate"].startswith("Bearer")
    assert body["status"] == 401 and "bearer key is required" in body["detail"]
    assert (await api.call("GET", "/v1/labs", key="not-a-key-0123456789"))[0] == 401
    for key in (APP_KEY, APP_KEY_2, ADMIN_KEY):  # both app keys (rotation) and admin may read the catalog
        status, labs, _ = await api.call("GET", "/v1/labs", key=key)
        assert status == 200 and "sandbox" in {lab["name"] for lab in labs}
    status, body, _ = await api.call("GET", "/v1/pool", key=APP_KEY)
    assert status == 403 and "scope app" in body["detail"]
    status, pool, _ = await api.call("GET", "/v1/pool", key=ADMIN_KEY)
    assert status == 200 and "classes" in pool
    status, classes, _ = await api.call("GET", "/v1/node-classes")
    assert status == 200 and all("memory_bytes" in cls and "image" not in cls for cls in classes)


async def test_bad_input_is_a_problem_naming_field_and_value(api: Api) -> None:
    cases = [
        ({"student_id": "bad id", "lab": "sandbox"}, "student_id", "bad id"),
        ({"student_id": student(), "lab": "no-such-lab"}, "lab", "no-such-lab"),
        ({"student_id": student(), "lab": "sandbox", "wait_seconds": 301}, "wait_seconds", "301"),
        ({"student_id": student(), "lab": "sandbox", "colour": "red"}, "colour", "red"),
    ]
    for body, field, value in cases:
        status, problem, headers = await api.call("POST", "/v1/sessions", json=body)
        assert (status, problem["field"], problem["value"]) == (422, field, value), problem
        assert headers["Content-Type"] == PROBLEM and value in problem["detail"]
    status, problem, _ = await api.call("POST", "/v1/sessions", data=b"{not json",
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and problem["title"] == "Invalid body"
    status, problem, _ = await api.call("GET", "/v1/sessions/nobody-here")
    assert (status, problem["field"], problem["value"]) == (404, "student_id", "nobody-here")
    status, problem, _ = await api.call("GET", "/v1/sessions?phase=dancing")
    assert (status, problem["field"], problem["value"]) == (422, "phase", "dancing")
    status, problem, _ = await api.call("POST", "/v1/sessions", data=b"x" * 70_000,
                                        headers={"Content-Type": "application/json"})
    assert status == 413 and "api_max_body_bytes" in problem["detail"]


async def test_a_lab_through_the_api(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    who = student()
    start = {"student_id": who, "lab": "apiserver-manifest-typo", "wait_seconds": 60}
    status, started, _ = await api.call("POST", "/v1/sessions", json=start, headers={"Idempotency-Key": "k1"})
    assert status == 201 and started["ready"], started
    key = started["ssh"]["private_key"]
    assert "PRIVATE KEY" in key and started["ssh"]["port"] > 0
    assert started["session"]["phase"] == "running"
    assert all(set(node) == {"name", "role", "warm", "healthy"} for node in started["session"]["nodes"])

    # A retried start (same key, same Idempotency-Key) gets the first answer; another start is a conflict.
    status, again, headers = await api.call("POST", "/v1/sessions", json=start, headers={"Idempotency-Key": "k1"})
    assert (status, again["ssh"]["private_key"], headers["Idempotency-Replayed"]) == (201, key, "true")
    status, reused, _ = await api.call("POST", "/v1/sessions", json={**start, "lab": "sandbox"},
                                       headers={"Idempotency-Key": "k1"})
    assert status == 422 and reused["field"] == "Idempotency-Key"
    status, conflict, _ = await api.call("POST", "/v1/sessions", json=start)
    assert status == 409 and conflict["field"] == "student_id" and "already has lab" in conflict["detail"]

    # The private key goes to the key that started the lab only, and never into status or logs.
    status, session, _ = await api.call("GET", f"/v1/sessions/{who}")
    assert status == 200 and session["phase"] == "running" and "private_key" not in str(session)
    assert (await api.call("GET", f"/v1/sessions/{who}/ssh", key=APP_KEY_2))[0] == 403
    status, ssh, _ = await api.call("GET", f"/v1/sessions/{who}/ssh")
    assert status == 200 and ssh["ssh"]["private_key"] == key
    # (the test worker has no codec and logs its activity results at DEBUG: only the API's own logs count)
    api_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("temporalio"))
    assert key.splitlines()[1] not in api_logs

    status, page, _ = await api.call("GET", "/v1/sessions?lab=apiserver-manifest-typo&page_size=1")
    assert status == 200 and len(page["items"]) <= 1
    seen = {item["student_id"] for item in page["items"]}
    while page["next_page_token"]:
        status, page, _ = await api.call("GET", f"/v1/sessions?page_size=1&page_token={page['next_page_token']}")
        seen |= {item["student_id"] for item in page["items"]}
    assert who in seen

    status, extended, _ = await api.call("POST", f"/v1/sessions/{who}/extend")  # too early: a state refusal
    assert status == 409 and extended["detail"].startswith("extend: allowed only in the lab's last"), extended
    status, report, _ = await api.call("POST", f"/v1/sessions/{who}/check")
    assert status == 200 and report["max_score"] > 0 and report["results"]

    status, ended, _ = await api.call("POST", f"/v1/sessions/{who}/end", json={"reason": "time for lunch"},
                                      headers={"Idempotency-Key": "e1"})
    assert status == 202 and ended["student_id"] == who
    assert (await api.call("POST", f"/v1/sessions/{who}/end", json={"reason": "time for lunch"},
                           headers={"Idempotency-Key": "e1"}))[0] == 202  # replayed
    result = await api_result(api, who)
    assert result["reason"] == "time for lunch"
    status, refused, _ = await api.call("POST", f"/v1/sessions/{who}/extend")
    assert status in (404, 409) and refused["status"] == status


async def api_result(api: Api, who: str) -> dict[str, object]:
    import asyncio

    for _ in range(200):
        _status, session, _ = await api.call("GET", f"/v1/sessions/{who}")
        if session["phase"] in ("ended", "expired", "failed"):
            return dict(session)
        await asyncio.sleep(0.1)
    raise AssertionError("the session did not end")


async def test_rate_limit_answers_429_with_retry_after(stack: Stack, serve_api: Callable[..., Awaitable[Api]]) -> None:
    api = await serve_api(stack.settings, stack.labs, api_rate_limit=3)
    statuses = [(await api.call("GET", "/v1/labs"))[0] for _ in range(3)]
    status, problem, headers = await api.call("GET", "/v1/labs")
    assert problem["status"] == 429
    assert statuses == [200, 200, 200] and status == 429 and int(headers["Retry-After"]) >= 1
    assert (await api.call("GET", "/v1/labs", key=APP_KEY_2))[0] == 200  # per key


async def test_temporal_unreachable_is_503(tmp_path: object, serve_api: Callable[..., Awaitable[Api]]) -> None:
    settings = Settings(temporal_address=f"127.0.0.1:{free_port()}", data_dir=tmp_path)  # nothing listens there
    api = await serve_api(settings)
    status, problem, headers = await api.call("GET", "/readyz", key=None)
    assert status == 503 and "unreachable" in problem["detail"] and headers["Retry-After"]
    status, problem, _ = await api.call("GET", "/v1/sessions/alice")
    assert status == 503
    assert (await api.call("GET", "/healthz", key=None))[0] == 200


async def test_published_images_from_a_mounted_configmap(tmp_path: object) -> None:
    """The API reads published images from files (a mounted ConfigMap), never from the Kubernetes API."""
    from datetime import UTC, datetime
    from pathlib import Path

    from cluster.published_images import PublishedImage
    from labrador.published_images import published_images_store

    directory = Path(str(tmp_path)) / "published"
    directory.mkdir()
    (directory / "..data").mkdir()  # the kubelet's own entries are skipped
    image = PublishedImage(node_class="cp-1-31", reference="registry.example/labrador@sha256:" + "a" * 64,
                           digest="sha256:" + "a" * 64, published_at=datetime.now(UTC))
    (directory / "cp-1-31").write_text(image.model_dump_json())
    store = published_images_store(Settings(cluster_backend="kubevirt", published_images_dir=directory))
    assert store.all() == {"cp-1-31": image}


def test_labrador_api_refuses_to_start_without_keys(tmp_path: object) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABRADOR_")}
    env.update(HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path), PYTHONPATH=str(root))
    run = subprocess.run([sys.executable, "-m", "labrador", "api"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "setting api_keys: no API key configured" in run.stderr
    env["LABRADOR_API_KEYS"] = "app:tiny7key"
    run = subprocess.run([sys.executable, "-m", "labrador", "api"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1 and "entry 1 has a key shorter than 16" in run.stderr and "tiny7key" not in run.stderr
