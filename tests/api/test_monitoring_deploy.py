"""deploy/monitoring: the dashboard asks only for metrics the code records; the scrape config finds them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.kubevirt import schemas

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
SOURCES = [ROOT / "workflows" / "metrics.py", ROOT / "workflows" / "webhooks.py", ROOT / "labrador" / "metrics.py",
           *(ROOT / "activities").glob("*.py")]


def recorded_names() -> set[str]:
    text = "\n".join(path.read_text() for path in SOURCES)
    return set(re.findall(r"labrador_[a-z_]+", text))


def test_every_labrador_metric_of_the_dashboard_is_recorded() -> None:
    dashboard = json.loads((MONITORING / "labrador-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"labrador_[a-z_]+", e)}
    assert used and used <= recorded_names(), used - recorded_names()
    assert any("temporal_" in e for e in exprs)  # the SDK's own metrics, same endpoint


def test_the_worker_is_scraped_by_annotation_and_by_servicemonitor() -> None:
    worker = yaml.safe_load((ROOT / "deploy" / "worker" / "worker.yaml").read_text())
    pod = worker["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = int(env["LABRADOR_METRICS_ADDRESS"].rsplit(":", 1)[1])
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    service = yaml.safe_load((MONITORING / "service.yaml").read_text())
    assert schemas.errors(service) == []
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {"service.yaml", "servicemonitor.yaml"}
