"""The ConfigMap-backed published-images store, over HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cluster.kubevirt.api import NAMESPACES, KubeApi
from cluster.kubevirt.published_images import CONFIGMAP_NAME, ConfigMapPublishedImages
from cluster.published_images import PublishedImage, effective_image
from labs.models import NodeClass, Role
from tests.kubevirt.emulator import CONFIGMAPS, LabEmulator


def image(node_class: str, digest: str) -> PublishedImage:
    return PublishedImage(node_class=node_class, reference=f"127.0.0.1:5000/labrador/{node_class}@sha256:{digest}",
                          tag="v1", digest=f"sha256:{digest}", published_at=datetime(2026, 1, 1, tzinfo=UTC))


async def test_publish_and_read_back_per_class(sync_api: KubeApi, emulator: LabEmulator) -> None:
    worker_namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "labrador"}}
    await asyncio.to_thread(sync_api.create, NAMESPACES, worker_namespace)
    store = ConfigMapPublishedImages(sync_api, "labrador")
    assert await asyncio.to_thread(store.all) == {}
    await asyncio.to_thread(store.publish, image("cp-v131", "a" * 64))
    await asyncio.to_thread(store.publish, image("worker-v131", "b" * 64))
    await asyncio.to_thread(store.publish, image("cp-v131", "c" * 64))  # a rebuild replaces its class only
    found = await asyncio.to_thread(store.all)
    assert sorted(found) == ["cp-v131", "worker-v131"]
    assert found["cp-v131"].digest == "sha256:" + "c" * 64
    assert found["worker-v131"].digest == "sha256:" + "b" * 64
    configmap = emulator.live(CONFIGMAPS, "labrador", CONFIGMAP_NAME)
    assert configmap is not None and set(configmap["data"]) == {"cp-v131", "worker-v131"}
    cls = NodeClass(name="cp-v131", role=Role.CONTROLPLANE, image="base:1", kubernetes_version="1.31.2")
    assert effective_image(cls, found) == found["cp-v131"].reference
