"""Rebuild schedules for the node classes' golden images (used by `labrador schedules apply`).

One schedule per node class that has a build recipe: the recipe's `schedule` cron, else the
`image_rebuild_schedule` setting (weekly by default). Each run starts an ImageBuildWorkflow with a
golden-build source; overlapping runs are skipped (a rebuild still running when the next is due
wins, the next week catches up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cluster.settings import Settings
from labs.models import NodeClass
from workflows.image_models import IMAGE_BUILD_WORKFLOW, ImageBuildInput, ImageSource, SourceKind

if TYPE_CHECKING:
    from temporalio.client import Schedule


@dataclass(frozen=True)
class RebuildScheduleSpec:
    schedule_id: str
    node_class: str
    cron: str
    workflow: str
    workflow_id: str
    task_queue: str
    input: ImageBuildInput


def schedule_id(node_class: str) -> str:
    return f"labrador-image-rebuild-{node_class}"


def build_input(node_class: NodeClass, settings: Settings, source: ImageSource, *, registry: str | None = None,
                builder: str | None = None) -> ImageBuildInput:
    """The workflow input for one build, settings copied in (workflows never read settings)."""
    return ImageBuildInput(
        node_class=node_class, source=source, registry=registry or settings.registry,
        repository=settings.image_repository, builder=builder or settings.image_builder,
        insecure=settings.registry_insecure, export_api_version=settings.export_api_version,
        archive_bucket=settings.image_archive_bucket)


def rebuild_schedule_specs(node_classes: dict[str, NodeClass], settings: Settings) -> list[RebuildScheduleSpec]:
    specs = []
    for name in sorted(node_classes):
        node_class = node_classes[name]
        if node_class.build is None:
            continue
        # Builder VMs run in the first image source namespace (the admission policy allows them there).
        source = ImageSource(kind=SourceKind.GOLDEN, namespace=settings.image_source_namespaces[0])
        specs.append(RebuildScheduleSpec(
            schedule_id=schedule_id(name), node_class=name,
            cron=node_class.build.schedule or settings.image_rebuild_schedule,
            workflow=IMAGE_BUILD_WORKFLOW, workflow_id=f"image-build/{name}", task_queue=settings.task_queue,
            input=build_input(node_class, settings, source)))
    return specs


def image_rebuild_schedules(settings: Settings) -> list[tuple[str, Schedule]]:
    """`(schedule ID, temporalio Schedule)` per node class with a recipe, from the configured catalog:
    the hook `labrador schedules apply` (labrador.schedules.image_schedules) calls."""
    from labs.loader import load_catalog

    classes = dict(load_catalog(settings.catalog_dir).node_classes)
    return [(spec.schedule_id, temporal_schedule(spec)) for spec in rebuild_schedule_specs(classes, settings)]


def temporal_schedule(spec: RebuildScheduleSpec) -> Schedule:
    """The temporalio.client.Schedule for a spec (create_schedule / update with it)."""
    from temporalio.client import (
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
    )

    return Schedule(
        action=ScheduleActionStartWorkflow(spec.workflow, spec.input, id=spec.workflow_id, task_queue=spec.task_queue),
        spec=ScheduleSpec(cron_expressions=[spec.cron]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
