"""Text of node-classes.yaml entries for catalog tests, so the tests that write their own catalog
share one spelling of a node class (and change together when a required field is added).

Each entry is four lines (name, role, image, kubernetes_version) plus `more`: the tests that assert
FILE:LINE:COL positions count on that."""

from __future__ import annotations

NODE_IMAGE = "registry.lab.internal/labrador/k8s-node:v1.31.4-r3"


def node_class(name: str, role: str, *, image: str = NODE_IMAGE, more: str = "") -> str:
    """One `node_classes:` entry running Kubernetes 1.31.4; `more`: its further lines, indented by 4."""
    return f"  - name: {name}\n    role: {role}\n    image: {image}\n    kubernetes_version: 1.31.4\n{more}"
