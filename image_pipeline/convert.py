"""Convert a disk to compressed qcow2 with qemu-img, check it, record its virtual size."""

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


async def _run(*argv: str) -> tuple[int, bytes, bytes]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        raise PermanentError(f"{argv[0]} is not installed (Debian package qemu-utils)") from exc
    out, err = await proc.communicate()
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
    info = await disk_info(source)
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
