"""Published-images store on a ConfigMap in the worker's namespace (kubevirt mode).

Same interface as `cluster.published_images.JsonFilePublishedImages`: one key per node class,
the value a JSON `PublishedImage`. `publish` is a JSON merge patch of one key, so two pipelines
publishing different classes at once never overwrite each other.
"""

from __future__ import annotations

from cluster.kubevirt import labels as L
from cluster.kubevirt.api import CONFIGMAPS, KubeApi
from cluster.published_images import PublishedImage

CONFIGMAP_NAME = "labrador-published-images"


def configmap_manifest(namespace: str, data: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIGMAP_NAME,
            "namespace": namespace,
            "labels": {L.MANAGED_BY: L.MANAGED_BY_VALUE, L.COMPONENT: "published-images"},
        },
        "data": data or {},
    }


class ConfigMapPublishedImages:
    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def all(self) -> dict[str, PublishedImage]:
        configmap = self.api.get(CONFIGMAPS, self.namespace, CONFIGMAP_NAME)
        data = (configmap or {}).get("data") or {}
        return {name: PublishedImage.model_validate_json(value) for name, value in sorted(data.items())}

    def publish(self, image: PublishedImage) -> None:
        value = image.model_dump_json()
        _, created = self.api.create(CONFIGMAPS, configmap_manifest(self.namespace, {image.node_class: value}))
        if not created:
            self.api.patch(CONFIGMAPS, self.namespace, CONFIGMAP_NAME, {"data": {image.node_class: value}})
