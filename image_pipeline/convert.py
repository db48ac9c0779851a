"""Inspect an input disk, convert it to compressed qcow2 with qemu-img, check it, record its virtual size.

Every input disk (a `--from-disk` file, a downloaded export) is inspected first (`inspect_input`):
`qemu-img info --output=json` must report a known format (raw or qcow2), no backing file (a qcow2
whose backing file is /etc/shadow would carry it into the image), no external data file, a virtual
size between MIN_VIRTUAL_SIZE and MAX_VIRTUAL_SIZE, and the first sector must hold a boot signature
(0x55AA at offset 510: an MBR, or the protective MBR of a GPT disk; read from the guest view with
`qemu-img dd` for qcow2). That is what "bootable" can be checked cheaply to mean: a text file, an
empty or unpartitioned disk never becomes an image. Anything else is a PermanentError naming why,
before anything is converted, pushed or published.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress, ProgressCallback, ignore

_PERCENT_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
KNOWN_FORMATS = ("raw", "qcow2")
MIN_VIRTUAL_SIZE = 1 << 20
MAX_VIRTUAL_SIZE = 2 << 40  # labs.models.MAX_DISK
BOOT_SIGNATURE = b"\x55\xaa"
INFO_TIMEOUT = 60.0


@dataclass(frozen=True)
class DiskInfo:
    path: str
    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None = None


@dataclass(frozen=True)
class ConvertResult:
    path: str
    virtual_size: int
    size: int
    source_format: str


async def _run(*argv: str, limit: float | None = None) -> tuple[int, bytes, bytes]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        raise PermanentError(f"{argv[0]} is not installed (Debian package qemu-utils)") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise PermanentError(f"{argv[0]} {argv[1]} did not finish within {limit:g} s") from None
    return proc.returncode or 0, out, err


async def disk_info(path: Path) -> DiskInfo:
    if not _is_file(path):
        raise PermanentError(f"disk {path} does not exist")
    code, out, err = await _run("qemu-img", "info", "--output", "json", str(path))
    if code:
        raise PermanentError(f"qemu-img info {path.name}: {err.decode(errors='replace').strip()}")
    data = json.loads(out)
    return DiskInfo(str(path), data["format"], int(data["virtual-size"]), int(data.get("actual-size", 0)),
                    data.get("backing-filename"))


async def inspect_input(path: Path) -> DiskInfo:
    """The input disk's info, or PermanentError: unknown format, backing file, external data file,
    absurd virtual size, no boot signature (see the module doc)."""
    if not _is_file(path):
        raise PermanentError(f"disk {path} does not exist or is not a regular file")
    code, out, err = await _run("qemu-img", "info", "--output=json", str(path), limit=INFO_TIMEOUT)
    if code:
        raise PermanentError(f"qemu-img info {path.name}: {err.decode(errors='replace').strip()[:300]}")
    try:
        data = json.loads(out)
        fmt, virtual = str(data["format"]), int(data["virtual-size"])
    except (ValueError, KeyError, TypeError):
        raise PermanentError(f"qemu-img info {path.name}: unreadable answer") from None
    name = path.name
    if fmt not in KNOWN_FORMATS:
        raise PermanentError(f"disk {name}: format {fmt!r} is not accepted (only {', '.join(KNOWN_FORMATS)})")
    backing = data.get("backing-filename") or data.get("full-backing-filename")
    if backing:
        raise PermanentError(f"disk {name}: has a backing file ({str(backing)[:100]!r}); flatten it first "
                             "(qemu-img convert -O qcow2) - a backing file is never followed")
    specific = (data.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise PermanentError(f"disk {name}: has an external data file; a disk must be one file")
    if not MIN_VIRTUAL_SIZE <= virtual <= MAX_VIRTUAL_SIZE:
        raise PermanentError(f"disk {name}: virtual size {virtual:,} bytes is outside "
                             f"{MIN_VIRTUAL_SIZE >> 20} MiB .. {MAX_VIRTUAL_SIZE >> 40} TiB")
    sector = await _first_sector(path, fmt)
    if sector[510:512] != BOOT_SIGNATURE:
        raise PermanentError(f"disk {name}: no boot signature in its first sector (not an MBR or GPT disk): "
                             "only a bootable disk becomes an image")
    return DiskInfo(str(path), fmt, virtual, int(data.get("actual-size", 0)), None)


async def _first_sector(path: Path, fmt: str) -> bytes:
    if fmt == "raw":
        with path.open("rb") as handle:
            return handle.read(512)
    out_dir = path.parent
    target = out_dir / f".{path.name}.sector0"
    try:
        code, _, err = await _run("qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=512", "count=1",
                                  f"if={path}", f"of={target}", limit=INFO_TIMEOUT)
        if code:
            raise PermanentError(f"qemu-img dd {path.name}: {err.decode(errors='replace').strip()[:300]}")
        return target.read_bytes()[:512]
    finally:
        target.unlink(missing_ok=True)


async def check_qcow2(path: Path) -> None:
    code, out, err = await _run("qemu-img", "check", "-f", "qcow2", str(path))
    if code:
        text = (err or out).decode(errors="replace").strip().splitlines()
        raise PermanentError(f"qemu-img check {path.name} failed (exit {code}): {' '.join(text[-3:])}")


def _is_file(path: Path) -> bool:
    return path.is_file()


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done.json")


def _converted(dest: Path) -> ConvertResult | None:
    try:
        data = json.loads(_sidecar(dest).read_text())
        if dest.is_file() and dest.stat().st_size == data["size"]:
            return ConvertResult(**data)
    except (OSError, ValueError, KeyError):
        pass
    return None


def _record(dest: Path, virtual_size: int, source_format: str) -> ConvertResult:
    result = ConvertResult(str(dest), virtual_size, dest.stat().st_size, source_format)
    _sidecar(dest).write_text(json.dumps(asdict(result)))
    return result


async def convert_to_qcow2(source: Path, dest: Path, progress: ProgressCallback = ignore) -> ConvertResult:
    """`qemu-img convert -O qcow2 -c` into a temporary name, `qemu-img check`, then rename."""
    done = _converted(dest)
    if done:
        return done
    info = await inspect_input(source)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "qemu-img", "convert", "-p", "-f", info.format, "-O", "qcow2", "-c", str(source), str(tmp),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    buffer = b""
    while True:
        block = await proc.stdout.read(256)
        if not block:
            break
        buffer = (buffer + block)[-512:]
        found = _PERCENT_RE.findall(buffer)
        if found:
            progress(Progress("convert", int(float(found[-1]) * 10), 1000))
    err = await proc.stderr.read()
    if await proc.wait():
        tmp.unlink(missing_ok=True)
        raise PipelineError(f"qemu-img convert {source.name}: {err.decode(errors='replace').strip()}")
    try:
        await check_qcow2(tmp)
    except PermanentError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return _record(dest, info.virtual_size, info.format)
