"""The containerDisk layer as upstream KubeVirt writes it: one tar with `disk/` (0555) and one disk
file (0444), both owned by 107:107 (qemu in virt-launcher). Produced as a stream: tar headers are
computed up front, the disk bytes follow straight from the file, so no tar copy ever hits the disk.
The layer is uncompressed: a `qemu-img convert -c` qcow2 is already compressed, gzip would only
burn CPU. Entries carry mtime 0 so the same disk always gives the same layer digest.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

QEMU_UID = 107
DISK_DIR = "disk/"
DISK_FILE = "disk/disk.img"
_BLOCK = 512
_END = b"\0" * (2 * _BLOCK)


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = QEMU_UID
    info.uname = info.gname = ""
    info.size = size
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)  # pax headers only when the size needs them (> 8 GiB)


def layer_framing(disk_size: int, file_name: str = DISK_FILE, file_mode: int = 0o444,
                  dir_mode: int = 0o555) -> tuple[bytes, bytes]:
    """The bytes before and after the disk content."""
    head = _entry(DISK_DIR, tarfile.DIRTYPE, dir_mode) + _entry(file_name, tarfile.REGTYPE, file_mode, disk_size)
    padding = b"\0" * (-disk_size % _BLOCK)
    return head, padding + _END


def layer_size(disk_size: int) -> int:
    head, tail = layer_framing(disk_size)
    return len(head) + disk_size + len(tail)


def iter_layer(disk: Path, chunk_size: int = 4 << 20) -> Iterator[bytes]:
    size = disk.stat().st_size
    head, tail = layer_framing(size)
    yield head
    with disk.open("rb") as handle:
        remaining = size
        while remaining:
            block = handle.read(min(chunk_size, remaining))
            if not block:
                raise OSError(f"{disk} shrank while it was being read")
            remaining -= len(block)
            yield block
    yield tail
