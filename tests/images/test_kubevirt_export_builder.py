"""Export and builder VM adapters: schema-valid manifests, and their calls over HTTP against kmock."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kmock
import kubernetes
import kubernetes_validate
import pytest
import yaml

from cluster.kubevirt.builder import BuilderClient, builder_phase, builder_vm_manifest, disk_name
from cluster.kubevirt.export import ExportClient, ExportFailed, export_manifest, token_secret_manifest
from image_pipeline.errors import PermanentError
from image_pipeline.golden import SimulatedGoldenBuilder, wait_powered_off
from labs.models import NodeClass

SCHEMAS = Path(__file__).resolve().parents[2].parent.parent / "shared" / "schemas"
if not SCHEMAS.is_dir():
    SCHEMAS = Path("/work/shared/schemas")
NODE_CLASS = NodeClass(
    name="cp-small", role="controlplane", image="registry.example/base:1", kubernetes_version="1.31.2",
    build={"base_image": "quay.io/containerdisks/ubuntu:24.04", "install_script": "#!/bin/bash\nset -e\necho 'ok'\n",
           "disk_size": "12Gi"},
)


def strict(schema: Any) -> Any:
    """The CRD schemas allow unknown fields; the API server would drop them silently. Forbid them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(name: str) -> Any:
    return strict(json.loads((SCHEMAS / f"kubevirt-crd-schema-{name}.json").read_text()))


@pytest.mark.parametrize("version", ["v1beta1", "v1"])
@pytest.mark.parametrize(("kind", "group"), [("VirtualMachine", "kubevirt.io"), ("PersistentVolumeClaim", None)])
def test_export_manifest_is_schema_valid(version: str, kind: str, group: str | None) -> None:
    manifest = export_manifest("golden", "exp", kind, "src", api_version=version)  # type: ignore[arg-type]
    jsonschema.validate(manifest, crd_schema("virtualmachineexport"))
    assert manifest["apiVersion"] == f"export.kubevirt.io/{version}"
    assert manifest["spec"]["source"].get("apiGroup") == group
    assert manifest["spec"]["tokenSecretRef"] == "exp-token"


def test_token_secret_is_a_valid_secret() -> None:
    kubernetes_validate.validate(token_secret_manifest("golden", "exp", "t0k3n"), "1.31", strict=True)


def test_builder_vm_manifest_is_schema_valid_and_powers_off_once() -> None:
    manifest = builder_vm_manifest("builder", "golden", NODE_CLASS)
    jsonschema.validate(manifest, crd_schema("virtualmachine"))
    spec = manifest["spec"]
    assert spec["runStrategy"] == "Once"
    template = spec["dataVolumeTemplates"][0]
    assert template["metadata"]["name"] == disk_name("builder")
    assert template["spec"]["source"] == {"registry": {"url": "docker://quay.io/containerdisks/ubuntu:24.04"}}
    assert template["spec"]["storage"]["resources"]["requests"]["storage"] == "12Gi"
    user_data = next(v for v in spec["template"]["spec"]["volumes"] if "cloudInitNoCloud" in v)[
        "cloudInitNoCloud"]["userData"]
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    command = config["runcmd"][0][2]
    assert command.index("labrador-install.sh") < command.index("--machine-id") < command.index("poweroff")


def test_builder_vm_needs_a_recipe() -> None:
    with pytest.raises(ValueError, match="no build recipe"):
        builder_vm_manifest("b", "ns", NODE_CLASS.model_copy(update={"build": None}))


@pytest.mark.parametrize(("vm_status", "vmi_phase", "seen", "expected"), [
    (None, None, False, "Missing"),
    ("Provisioning", None, False, "Pending"),
    ("Running", "Running", False, "Running"),
    ("Stopped", "Succeeded", False, "PoweredOff"),
    ("Stopped", None, False, "Pending"),  # not started yet
    ("Stopped", None, True, "PoweredOff"),  # ran, powered off, instance gone
    ("ErrImagePull", None, False, "Failed"),
    ("Running", "Failed", True, "Failed"),
])
def test_builder_phase(vm_status: str | None, vmi_phase: str | None, seen: bool, expected: str) -> None:
    vm = None if vm_status is None else {"status": {"printableStatus": vm_status}}
    vmi = None if vmi_phase is None else {"status": {"phase": vmi_phase}}
    assert builder_phase(vm, vmi, seen)[0] == expected


@pytest.fixture
async def cluster() -> Any:
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        for resource in ("export.kubevirt.io/v1/virtualmachineexports", "v1/secrets",
                         "kubevirt.io/v1/virtualmachines", "kubevirt.io/v1/virtualmachineinstances"):
            emu.resources[resource] = {}
        config = kubernetes.client.Configuration()
        config.host = str(server.url)
        yield emu, kubernetes.client.ApiClient(config)


def live(emu: Any, plural: str) -> dict[str, Any]:
    return {n: o for (r, _, n), o in emu.objects.items() if r.plural == plural and not o.deleted}


async def test_export_ensure_is_idempotent_and_a_lost_token_is_replaced(cluster: Any) -> None:
    emu, api = cluster
    client = ExportClient(api, "v1")
    await asyncio.to_thread(client.ensure, "golden", "exp", "VirtualMachine", "builder", "first")
    await asyncio.to_thread(client.ensure, "golden", "exp", "VirtualMachine", "builder", "first")
    assert list(live(emu, "virtualmachineexports")) == ["exp"]
    assert live(emu, "secrets")["exp-token"]["stringData"] == {"token": "first"}
    await asyncio.to_thread(functools.partial(client.ensure, "golden", "exp", "VirtualMachine", "builder", "second",
                                              new_token=True))
    assert live(emu, "secrets")["exp-token"]["stringData"] == {"token": "second"}
    verbs = {r.method for r in emu._requests if r.resource is not None and r.resource.plural == "secrets"}
    assert verbs == {"POST", "DELETE"}, "Secrets are only created and deleted (RBAC: create, delete)"


async def test_export_wait_ready_returns_the_raw_and_gzip_links(cluster: Any) -> None:
    emu, api = cluster
    client = ExportClient(api, "v1")
    await asyncio.to_thread(client.ensure, "golden", "exp", "PersistentVolumeClaim", "disk", "t")
    obj = live(emu, "virtualmachineexports")["exp"]

    async def controller() -> None:
        await asyncio.sleep(0.2)
        obj.patch({"status": {"phase": "Ready", "links": {"internal": {"cert": "PEM", "volumes": [{
            "name": "disk", "formats": [{"format": "raw", "url": "https://svc/raw"},
                                        {"format": "gzip", "url": "https://svc/gz"}]}]}}}})

    task = asyncio.create_task(controller())
    status = await asyncio.to_thread(client.wait_ready, "golden", "exp", timeout=10, poll=0.05)
    await task
    assert (status.raw_url, status.gzip_url, status.cert) == ("https://svc/raw", "https://svc/gz", "PEM")


async def test_a_skipped_export_fails_with_the_reason(cluster: Any) -> None:
    emu, api = cluster
    client = ExportClient(api, "v1")
    await asyncio.to_thread(client.ensure, "golden", "exp", "VirtualMachine", "running-vm", "t")
    live(emu, "virtualmachineexports")["exp"].patch({"status": {"phase": "Skipped", "conditions": [
        {"type": "Ready", "status": "False", "message": "VM is running"}]}})
    with pytest.raises(ExportFailed, match="VM is running"):
        await asyncio.to_thread(client.wait_ready, "golden", "exp", timeout=5, poll=0.05)


async def test_export_delete_removes_both_and_tolerates_repeats(cluster: Any) -> None:
    emu, api = cluster
    client = ExportClient(api, "v1")
    await asyncio.to_thread(client.ensure, "golden", "exp", "VirtualMachine", "builder", "t")
    await asyncio.to_thread(client.delete, "golden", "exp")
    await asyncio.to_thread(client.delete, "golden", "exp")
    assert live(emu, "virtualmachineexports") == {} and live(emu, "secrets") == {}


async def test_builder_client_walks_to_powered_off_and_deletes(cluster: Any) -> None:
    emu, api = cluster
    client = BuilderClient(api)
    manifest = builder_vm_manifest("builder", "golden", NODE_CLASS)
    await asyncio.to_thread(client.create, manifest)
    await asyncio.to_thread(client.create, manifest)  # a retried start
    vm = live(emu, "virtualmachines")["builder"]
    vm.patch({"status": {"printableStatus": "Provisioning"}})
    assert (await asyncio.to_thread(client.observe, "golden", "builder", False))[0] == "Pending"
    vm.patch({"status": {"printableStatus": "Running"}})
    emu.objects[(kmock.resource("kubevirt.io", "v1", "virtualmachineinstances"), "golden", "builder")] = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "builder", "namespace": "golden"}, "status": {"phase": "Running"}}
    assert (await asyncio.to_thread(client.observe, "golden", "builder", False))[0] == "Running"
    live(emu, "virtualmachineinstances")["builder"].patch({"status": {"phase": "Succeeded"}})
    vm.patch({"status": {"printableStatus": "Stopped"}})
    assert (await asyncio.to_thread(client.observe, "golden", "builder", True))[0] == "PoweredOff"
    await asyncio.to_thread(client.delete, "golden", "builder")
    await asyncio.to_thread(client.delete, "golden", "builder")
    assert live(emu, "virtualmachines") == {}


async def test_wait_with_the_simulated_builder_reports_each_phase(tmp_path: Path) -> None:
    builder = SimulatedGoldenBuilder(tmp_path, steps=2)
    builder.start("b", "ns", NODE_CLASS)
    seen: list[tuple[str, bool]] = []
    observation = await wait_powered_off(builder, "b", "ns", limit=10, poll=0,
                                         on_poll=lambda o, running: seen.append((o.phase, running)))
    assert observation.phase == "PoweredOff" and observation.disk_path and Path(observation.disk_path).is_file()  # noqa: ASYNC240
    assert [p for p, _ in seen] == ["Pending", "Running", "Running", "PoweredOff"]
    assert seen[-1][1] is True


async def test_a_builder_that_never_powers_off_times_out_with_advice(tmp_path: Path) -> None:
    builder = SimulatedGoldenBuilder(tmp_path, steps=10_000)
    builder.start("b", "ns", NODE_CLASS)
    with pytest.raises(PermanentError, match="serial console"):
        await wait_powered_off(builder, "b", "ns", limit=0.2, poll=0.05)


async def test_every_call_is_declared_for_the_rbac(cluster: Any) -> None:
    from cluster.kubevirt.api import PERMISSIONS

    emu, api = cluster
    exports, builders = ExportClient(api, "v1"), BuilderClient(api)
    await asyncio.to_thread(exports.ensure, "golden", "exp", "VirtualMachine", "builder", "t")
    await asyncio.to_thread(exports.status, "golden", "exp")
    await asyncio.to_thread(exports.delete, "golden", "exp")
    await asyncio.to_thread(builders.create, builder_vm_manifest("b", "golden", NODE_CLASS))
    await asyncio.to_thread(builders.observe, "golden", "b", False)
    await asyncio.to_thread(builders.delete, "golden", "b")
    verbs = {"POST": "create", "GET": "get", "DELETE": "delete", "PATCH": "patch"}
    used = {(r.resource.group, r.resource.plural, verbs[r.method]) for r in emu._requests if r.resource is not None}
    declared = {(g, r, v) for g, r, v, _ in PERMISSIONS}
    assert used - declared == set()


async def test_kubevirt_mode_publishes_to_the_configmap_store(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from image_pipeline.publish import publish
    from labrador.published_images import published_images_store
    from labrador.settings import Settings

    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emu.resources["v1/configmaps"] = {}
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "k",
            "clusters": [{"name": "k", "cluster": {"server": str(server.url)}}],
            "users": [{"name": "k", "user": {"token": "t"}}],
            "contexts": [{"name": "k", "context": {"cluster": "k", "user": "k"}}],
        }))
        settings = Settings(data_dir=tmp_path, cluster_backend="kubevirt", kube_config=kubeconfig,
                            kube_namespace="labrador")
        store = published_images_store(settings)
        at = datetime(2026, 11, 24, tzinfo=UTC)
        await asyncio.to_thread(publish, store, "cp", "r/x@sha256:" + "a" * 64, "sha256:" + "a" * 64, "cp-1", at)
        await asyncio.to_thread(publish, store, "w", "r/x@sha256:" + "b" * 64, "sha256:" + "b" * 64, "w-1", at)
        images = await asyncio.to_thread(store.all)
    assert {name: image.tag for name, image in images.items()} == {"cp": "cp-1", "w": "w-1"}
    assert not (tmp_path / "published-images.json").exists()
