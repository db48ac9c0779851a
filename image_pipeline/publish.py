"""Publish a pushed digest as the node class's current image, in the one store every reader uses."""

from __future__ import annotations

import importlib
from datetime import datetime

from labrador.published_images import JsonFilePublishedImages, PublishedImage, PublishedImages, now
from labrador.settings import Settings


def published_images_store(settings: Settings) -> PublishedImages:
    """ConfigMap in the worker's namespace in kubevirt mode, JSON file in the data dir otherwise."""
    if settings.cluster_backend == "kubevirt":
        # The ConfigMap store and its API wrapper live with the kubevirt backend; looked up by name
        # so this module does not import the Kubernetes client in simulated mode.
        api = importlib.import_module("cluster.kubevirt.api")
        configmap_store = importlib.import_module("cluster.kubevirt.published_images")
        kube_config = getattr(settings, "kube_config", None)
        client = api.KubeApi(api.load_api_client(str(kube_config) if kube_config else None))
        store: PublishedImages = configmap_store.ConfigMapPublishedImages(client, settings.kube_namespace)
        return store
    return JsonFilePublishedImages.in_data_dir(settings.data_dir)


def publish(store: PublishedImages, node_class: str, reference: str, digest: str, tag: str | None,
            at: datetime | None = None) -> PublishedImage:
    image = PublishedImage(node_class=node_class, reference=reference, tag=tag, digest=digest,
                           published_at=at or now())
    store.publish(image)
    return image
