"""Publish a pushed digest as the node class's current image, in the one store every reader uses."""

from __future__ import annotations

from datetime import datetime

from cluster.published_images import PublishedImage, PublishedImages, now


def publish(store: PublishedImages, node_class: str, reference: str, digest: str, tag: str | None,
            at: datetime | None = None) -> PublishedImage:
    image = PublishedImage(node_class=node_class, reference=reference, tag=tag, digest=digest,
                           published_at=at or now())
    store.publish(image)
    return image
