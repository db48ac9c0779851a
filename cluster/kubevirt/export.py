"""VirtualMachineExport + its token Secret: manifests (pure) and create / wait / delete (kubernetes client).

The worker makes up the token and writes the Secret itself, so it needs create/patch/delete on
Secrets but never get/list: it never reads a Secret. `export.kubevirt.io` is `v1beta1` before
KubeVirt 1.9 and `v1` from 1.9; the version is a setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

EXPORT_GROUP = "export.kubevirt.io"
EXPORT_PLURAL = "virtualmachineexports"
ApiVersion = Literal["v1beta1", "v1"]
SourceKind = Literal["VirtualMachine", "PersistentVolumeClaim", "VirtualMachineSnapshot"]
_SOURCE_GROUPS = {"VirtualMachine": "kubevirt.io", "VirtualMachineSnapshot": "snapshot.kubevirt.io",
                  "PersistentVolumeClaim": ""}
MANAGED_BY = {"app.kubernetes.io/managed-by": "labrador", "app.kubernetes.io/component": "image-export"}


class ExportFailed(RuntimeError):
    """The export cannot become ready (skipped, terminated, or timed out)."""


def token_secret_name(export_name: str) -> str:
    return f"{export_name}-token"[:253]


def token_secret_manifest(namespace: str, export_name: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token_secret_name(export_name), "namespace": namespace, "labels": dict(MANAGED_BY)},
        "type": "Opaque",
        "stringData": {"token": token},
    }


def export_manifest(namespace: str, name: str, source_kind: SourceKind, source_name: str, *,
                    api_version: ApiVersion = "v1", ttl: str = "2h") -> dict[str, Any]:
    source: dict[str, str] = {"kind": source_kind, "name": source_name}
    if _SOURCE_GROUPS[source_kind]:
        source["apiGroup"] = _SOURCE_GROUPS[source_kind]
    return {
        "apiVersion": f"{EXPORT_GROUP}/{api_version}",
        "kind": "VirtualMachineExport",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "spec": {"source": source, "tokenSecretRef": token_secret_name(name), "ttlDuration": ttl},
    }


@dataclass(frozen=True)
class ExportStatus:
    phase: str
    raw_url: str | None = None
    gzip_url: str | None = None
    cert: str | None = None
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.phase == "Ready" and bool(self.raw_url or self.gzip_url)


def export_status(obj: dict[str, Any], link: Literal["internal", "external"] = "internal") -> ExportStatus:
    """Read phase and the first volume's raw/gzip URLs (internal links for an in-cluster worker)."""
    status = obj.get("status") or {}
    links = status.get("links") or {}
    chosen = links.get(link) or links.get("external" if link == "internal" else "internal") or {}
    formats: dict[str, str] = {}
    for volume in chosen.get("volumes") or []:
        for item in volume.get("formats") or []:
            formats.setdefault(item.get("format", ""), item.get("url", ""))
        break  # builder disks export one volume; more would need a choice we do not make here
    messages = [c.get("message", "") for c in status.get("conditions") or [] if c.get("message")]
    return ExportStatus(status.get("phase", "Pending"), formats.get("raw"), formats.get("gzip"),
                        chosen.get("cert"), "; ".join(messages))


class ExportClient:
    def __init__(self, api_client: Any, api_version: ApiVersion = "v1") -> None:
        from kubernetes import client

        self.api_version = api_version
        self.core: Any = client.CoreV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)  # dict bodies, as the API takes them

    def ensure(self, namespace: str, name: str, source_kind: SourceKind, source_name: str, token: str, *,
               new_token: bool = False) -> None:
        """Create the token Secret and the export, keeping what exists. Safe to repeat.

        A Secret that exists holds the token of an earlier try of this same step, unless the
        caller made up a `new_token` (it lost the old one): then the Secret is deleted and written
        again. The worker may only create and delete Secrets, never read or patch them.
        """
        from kubernetes.client import ApiException

        secret = token_secret_manifest(namespace, name, token)
        try:
            self.core.create_namespaced_secret(namespace, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if new_token:
                self._delete_secret(namespace, name)
                self.core.create_namespaced_secret(namespace, secret)
        try:
            self.custom.create_namespaced_custom_object(
                EXPORT_GROUP, self.api_version, namespace, EXPORT_PLURAL,
                export_manifest(namespace, name, source_kind, source_name, api_version=self.api_version))
        except ApiException as exc:
            if exc.status != 409:
                raise

    def status(self, namespace: str, name: str) -> ExportStatus:
        obj = self.custom.get_namespaced_custom_object(EXPORT_GROUP, self.api_version, namespace, EXPORT_PLURAL, name)
        return export_status(obj)

    def wait_ready(self, namespace: str, name: str, *, timeout: float = 600, poll: float = 2,
                   on_poll: Callable[[ExportStatus], None] = lambda _: None) -> ExportStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(namespace, name)
            on_poll(status)
            if status.ready:
                return status
            if status.phase in ("Skipped", "Terminated"):
                raise ExportFailed(f"export {namespace}/{name} is {status.phase}: "
                                   f"{status.message or 'the source is not exportable (is the VM stopped?)'}")
            if time.monotonic() >= deadline:
                raise ExportFailed(f"export {namespace}/{name} not Ready after {timeout:.0f}s (phase {status.phase})")
            time.sleep(poll)

    def delete(self, namespace: str, name: str) -> None:
        """Delete the export and its token Secret; missing objects are fine."""
        from kubernetes.client import ApiException

        try:
            self.custom.delete_namespaced_custom_object(EXPORT_GROUP, self.api_version, namespace, EXPORT_PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self._delete_secret(namespace, name)

    def _delete_secret(self, namespace: str, export_name: str) -> None:
        from kubernetes.client import ApiException

        try:
            self.core.delete_namespaced_secret(token_secret_name(export_name), namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
