"""Rebuild schedules: one per node class with a recipe, weekly unless the recipe says otherwise."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.client import Schedule
from temporalio.testing import WorkflowEnvironment

from image_pipeline.schedules import image_rebuild_schedules, rebuild_schedule_specs, temporal_schedule
from labrador.settings import Settings
from labs.models import NodeClass
from workflows.image_models import SourceKind

RECIPE = {"base_image": "registry.example/base:1", "install_script": "true"}


def classes() -> dict[str, NodeClass]:
    base = {"role": "worker", "image": "registry.example/node:1", "kubernetes_version": "1.31.4"}
    return {
        "weekly": NodeClass(name="weekly", build=RECIPE, **base),  # type: ignore[arg-type]
        "nightly": NodeClass(name="nightly", build={**RECIPE, "schedule": "0 2 * * *"}, **base),  # type: ignore[arg-type]
        "frozen": NodeClass(name="frozen", **base),  # type: ignore[arg-type]
    }


def test_one_schedule_per_class_with_a_recipe(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, registry="registry.example:5000",
                        image_source_namespaces=["labrador-images"])
    specs = {spec.node_class: spec for spec in rebuild_schedule_specs(classes(), settings)}
    assert set(specs) == {"weekly", "nightly"}
    assert specs["weekly"].cron == "0 3 * * 0" and specs["nightly"].cron == "0 2 * * *"
    spec = specs["weekly"]
    assert spec.schedule_id == "labrador-image-rebuild-weekly" and spec.workflow_id == "image-build/weekly"
    assert spec.input.source.kind == SourceKind.GOLDEN and spec.input.source.namespace == "labrador-images"
    assert spec.input.registry == "registry.example:5000"
    other = Settings(data_dir=tmp_path, image_rebuild_schedule="30 4 * * 6")
    assert {s.cron for s in rebuild_schedule_specs(classes(), other)} == {"30 4 * * 6", "0 2 * * *"}


async def test_the_dev_server_accepts_the_schedules(dev_env: WorkflowEnvironment, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, task_queue=f"sched-{uuid.uuid4().hex[:8]}")
    for spec in rebuild_schedule_specs(classes(), settings):
        schedule = temporal_schedule(spec)
        assert isinstance(schedule, Schedule)
        handle = await dev_env.client.create_schedule(f"{spec.schedule_id}-{settings.task_queue}", schedule)
        description = await handle.describe()
        # The server stores a cron as structured calendars.
        assert description.schedule.spec.cron_expressions or description.schedule.spec.calendars
        assert description.schedule.action.workflow == "ImageBuildWorkflow"  # type: ignore[attr-defined]
        await handle.delete()


def test_the_hook_reads_the_catalog_and_skips_classes_without_a_recipe(tmp_path: Path) -> None:
    from labs.loader import load_catalog

    settings = Settings(data_dir=tmp_path)
    catalog = load_catalog(settings.catalog_dir)
    pairs = image_rebuild_schedules(settings)
    assert {sid for sid, _ in pairs} == {f"labrador-image-rebuild-{n}" for n, c in catalog.node_classes.items()
                                         if c.build is not None}
    assert all(isinstance(schedule, Schedule) for _, schedule in pairs)
