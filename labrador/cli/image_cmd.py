"""`labrador image ...`: build a containerDisk image through ImageBuildWorkflow, list what runs.

`build` starts the workflow (the worker does the work: a local disk must be readable by it) and
follows it: the step from the workflow's `status` query, byte progress from the heartbeat details
of the running activity.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from labrador.cli.common import EXIT_UNREACHABLE, JsonFlag, console, err_console, fail, print_json
from labrador.settings import Settings, SettingsError, load_settings
from labs.models import NodeClass

image_app = typer.Typer(help="containerDisk images: build from a VM, PVC or disk; list what each class runs.",
                        no_args_is_help=True)


class BuilderChoice(StrEnum):
    DAEMONLESS = "daemonless"
    DOCKER = "docker"


def _settings(flags: dict[str, Any]) -> Settings:
    try:
        return load_settings(flags)
    except SettingsError as exc:
        fail(str(exc))


def _node_classes(settings: Settings) -> dict[str, NodeClass]:
    from labs.loader import CatalogError, load_catalog

    try:
        return dict(load_catalog(settings.catalog_dir).node_classes)
    except CatalogError as exc:
        fail(f"catalog {settings.catalog_dir} is invalid ({len(exc.errors)} errors): run `labrador labs validate`")


def _ns_name(option: str, value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        fail(f"{option}: {value!r} is not NAMESPACE/NAME")
    return namespace, name


def _source(from_vm: str | None, from_pvc: str | None, from_disk: Path | None, golden: bool) -> Any:
    from workflows.image_models import ImageSource, SourceKind

    given = [flag for flag, value in (("--from-vm", from_vm), ("--from-pvc", from_pvc),
                                      ("--from-disk", from_disk), ("--golden", golden)) if value]
    if len(given) != 1:
        fail("give exactly one source: --from-vm NS/NAME, --from-pvc NS/NAME, --from-disk FILE or --golden"
             + (f" (got {' and '.join(given)})" if given else ""))
    if from_vm:
        namespace, name = _ns_name("--from-vm", from_vm)
        return ImageSource(kind=SourceKind.VM, namespace=namespace, name=name)
    if from_pvc:
        namespace, name = _ns_name("--from-pvc", from_pvc)
        return ImageSource(kind=SourceKind.PVC, namespace=namespace, name=name)
    if from_disk:
        path = from_disk.expanduser().resolve()
        if not path.is_file():
            fail(f"--from-disk: {str(from_disk)!r} is not a file")
        return ImageSource(kind=SourceKind.DISK, path=str(path))
    return ImageSource(kind=SourceKind.GOLDEN)


async def _heartbeat(handle: Any, client: Any) -> dict[str, Any] | None:
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            values = await client.data_converter.decode(pending.heartbeat_details.payloads)
            if values and isinstance(values[0], dict):
                return dict(values[0])
    return None


async def _follow(client: Any, handle: Any, show: bool) -> Any:
    from workflows.image_models import ImageBuildStatus

    result_task = asyncio.create_task(handle.result())
    if not show:
        return await result_task
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[detail]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        bar = progress.add_task("starting", total=None, detail="")
        while not result_task.done():
            try:
                status: ImageBuildStatus = await handle.query("status", result_type=ImageBuildStatus)
                beat = await _heartbeat(handle, client)
            except Exception:  # the workflow may finish between two polls
                beat, status = None, None  # type: ignore[assignment]
            if status is not None:
                total = beat.get("total") if beat else None
                done = (beat or {}).get("done", 0)
                detail = f"{done / 2**20:,.0f}/{total / 2**20:,.0f} MiB" if total and total > 1000 else ""
                progress.update(bar, description=status.step, total=total, completed=done if total else 0,
                                detail=detail)
            await asyncio.wait({result_task}, timeout=0.5)
    return await result_task


async def _build(settings: Settings, params: Any, as_json: bool) -> Any:
    from temporalio.client import WorkflowFailureError
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from labrador.temporal import connect
    from workflows.image_models import IMAGE_BUILD_WORKFLOW, ImageBuildResult

    try:
        client = await connect(settings)
    except RuntimeError as exc:
        fail(f"Temporal at {settings.temporal_address} is unreachable: {exc}", EXIT_UNREACHABLE)
    workflow_id = f"image-build/{params.node_class.name}"
    try:
        handle = await client.start_workflow(
            IMAGE_BUILD_WORKFLOW, params, id=workflow_id, task_queue=settings.task_queue, result_type=ImageBuildResult,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        fail(f"--class: a build of {params.node_class.name!r} is already running (workflow {workflow_id})")
    if not as_json:
        err_console.print(f"building {params.node_class.name} from {params.source.describe()} "
                          f"(workflow {workflow_id})")
    try:
        # The bars only on a terminal: under --json or in a log, nothing but the result.
        return await _follow(client, handle, show=not as_json and err_console.is_terminal)
    except WorkflowFailureError as exc:
        cause: Any = exc.cause
        while getattr(cause, "cause", None) is not None:
            cause = cause.cause  # the innermost error names what went wrong
        fail(f"image build of {params.node_class.name!r} failed: {cause}")


@image_app.command("build")
def build(
    node_class: Annotated[str, typer.Option("--class", help="node class to build an image for")],
    from_vm: Annotated[str | None, typer.Option("--from-vm", help="export a stopped VM: NAMESPACE/NAME")] = None,
    from_pvc: Annotated[str | None, typer.Option("--from-pvc", help="export a PVC: NAMESPACE/NAME")] = None,
    from_disk: Annotated[Path | None, typer.Option("--from-disk", help="a disk file the worker can read")] = None,
    golden: Annotated[bool, typer.Option("--golden", help="boot a builder VM from the class's recipe first")] = False,
    registry: Annotated[str | None, typer.Option("--registry", help="registry host[:port] (setting registry)")] = None,
    builder: Annotated[BuilderChoice | None, typer.Option("--builder", help="image builder")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Build and push a containerDisk image for a node class, then publish its digest."""
    from image_pipeline.schedules import build_input

    settings = _settings({"registry": registry, "image_builder": builder.value if builder else None})
    classes = _node_classes(settings)
    if node_class not in classes:
        fail(f"--class: {node_class!r} is not a node class (known: {', '.join(sorted(classes)) or 'none'})")
    source = _source(from_vm, from_pvc, from_disk, golden)
    if golden and classes[node_class].build is None:
        fail(f"--golden: node class {node_class!r} has no build recipe")
    if golden:
        source = source.model_copy(update={"namespace": settings.image_source_namespaces[0]})
    if settings.cluster_backend == "kubevirt" and source.namespace not in (None, *settings.image_source_namespaces):
        # The admission policy (deploy/admission-policy.yaml) would refuse the export there.
        flag = "--from-vm" if from_vm else "--from-pvc"
        fail(f"{flag}: namespace {source.namespace!r} is not in image_source_namespaces "
             f"({', '.join(settings.image_source_namespaces)})")
    try:
        params = build_input(classes[node_class], settings, source)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = {"registry": "--registry", "repository": "image_repository"}.get(str(error["loc"][0]), error["loc"][0])
        fail(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    result = asyncio.run(_build(settings, params, as_json))
    if as_json:
        print_json(result)
    else:
        console.print(f"pushed {result.tagged}\n  digest {result.digest}\n  "
                      f"{'published as' if result.published else 'not published:'} {result.reference}")


@image_app.command("list")
def list_images(as_json: JsonFlag = False) -> None:
    """Per node class: the catalog's base image, the published one, and the one nodes use."""
    from cluster.published_images import effective_image
    from labrador.published_images import published_images_store

    settings = _settings({})
    classes = _node_classes(settings)
    try:
        published = published_images_store(settings).all()
    except Exception as exc:  # a ConfigMap store needs the cluster
        fail(f"published-images store unreachable: {exc}", EXIT_UNREACHABLE)
    rows: list[dict[str, Any]] = [{
        "node_class": name,
        "base_image": cls.image,
        "published": published[name].reference if name in published else None,
        "tag": published[name].tag if name in published else None,
        "published_at": published[name].published_at if name in published else None,
        "effective_image": effective_image(cls, published),
        "rebuilds": bool(cls.build),
    } for name, cls in sorted(classes.items())]
    if as_json:
        print_json(rows)
        return
    from labrador.cli.tables import Col, print_table

    # Images are long and share their registry prefix: cut from the start, so the tag or digest that
    # tells them apart stays (the full references are in --json).
    print_table(console, (
        Col("class"), Col("base image", shrink=True, drop=1, keep_end=True),
        Col("published", shrink=True, min_width=16, keep_end=True),
        Col("since", drop=2),
    ), [
        [row["node_class"], row["base_image"], row["published"] or "-",
         f"{row['published_at']:%Y-%m-%d %H:%M}" if row["published_at"] else "-"]
        for row in rows
    ])


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")


