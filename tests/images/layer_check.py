"""Pull a pushed image with skopeo and check it is a valid containerDisk."""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.images.servers import Registry


@dataclass
class LayerEntry:
    name: str
    kind: str
    mode: int
    uid: int
    gid: int


def _creds(registry: Registry) -> list[str]:
    return ["--creds", f"{registry.username}:{registry.password}"] if registry.username else []


def skopeo_inspect(registry: Registry, reference: str) -> dict[str, object]:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *_creds(registry), f"docker://{reference}"],
                         check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out))


def pull_single_layer(registry: Registry, reference: str, into: Path) -> tuple[list[LayerEntry], Path]:
    """`skopeo copy` to a dir: layout, then list and extract the one layer."""
    layout = into / "pulled"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", *[
        a.replace("--creds", "--src-creds") for a in _creds(registry)], f"docker://{reference}", f"dir:{layout}"],
                   check=True, capture_output=True)
    manifest = json.loads((layout / "manifest.json").read_text())
    assert len(manifest["layers"]) == 1, manifest
    blob = layout / manifest["layers"][0]["digest"].split(":", 1)[1]
    entries: list[LayerEntry] = []
    extracted = into / "extracted"
    extracted.mkdir()
    disk = None
    with tarfile.open(blob, "r:*") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./").rstrip("/")
            kind = "dir" if member.isdir() else "file" if member.isreg() else "other"
            entries.append(LayerEntry(name, kind, member.mode & 0o7777, member.uid, member.gid))
            if member.isreg():
                handle = tar.extractfile(member)
                assert handle is not None
                disk = extracted / Path(name).name
                disk.write_bytes(handle.read())
    assert disk is not None
    return entries, disk


def assert_containerdisk(entries: list[LayerEntry], dir_mode: int, file_mode: int) -> None:
    assert [e.kind for e in entries] == ["dir", "file"], entries
    assert entries[0].name == "disk" and entries[1].name.startswith("disk/")
    assert all((e.uid, e.gid) == (107, 107) for e in entries), entries
    assert (entries[0].mode, entries[1].mode) == (dir_mode, file_mode)


def qemu_check(path: Path) -> None:
    subprocess.run(["qemu-img", "check", "-f", "qcow2", str(path)], check=True, capture_output=True)
