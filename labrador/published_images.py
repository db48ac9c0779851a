"""Which published-images store this process uses (the model and stores: `cluster.published_images`)."""

from __future__ import annotations

from cluster.published_images import JsonFilePublishedImages, MountedPublishedImages, PublishedImages
from cluster.settings import Settings


def published_images_store(settings: Settings) -> PublishedImages:
    """The mounted ConfigMap when `published_images_dir` is set (no Kubernetes access: the HTTP API), the
    ConfigMap in the worker's namespace in kubevirt mode, a JSON file in the data dir otherwise."""
    if settings.published_images_dir is not None:
        return MountedPublishedImages(settings.published_images_dir)
    if settings.cluster_backend == "kubevirt":
        # Imported here so simulated mode never loads the Kubernetes client.
        from cluster.kubevirt.api import KubeApi, load_api_client
        from cluster.kubevirt.published_images import ConfigMapPublishedImages

        kube_config = settings.kube_config
        client = KubeApi(load_api_client(str(kube_config) if kube_config else None))
        return ConfigMapPublishedImages(client, settings.kube_namespace)
    return JsonFilePublishedImages.in_data_dir(settings.data_dir)
