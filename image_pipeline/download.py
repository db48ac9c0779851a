"""Download a VirtualMachineExport volume: `raw` with HTTP Range resume, `gzip` as the fallback.

The partial file on disk is the resume point, not a heartbeat: heartbeats are throttled, so their
offset may lag behind what was written. A retry on the same worker truncates the partial file to a
chunk boundary (a torn last write cannot survive), re-hashes what it keeps and asks for the rest
with `Range: bytes=<offset>-`. The finished file gets a sidecar with its size and sha256 so a retry
after success does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl as ssl_module
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress, ProgressCallback, ignore

TOKEN_HEADER = "x-kubevirt-export-token"
DEFAULT_CHUNK = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RE = re.compile(r"bytes \*/(\d+)")


@dataclass(frozen=True)
class DownloadResult:
    path: str
    size: int
    sha256: str
    format: str
    resumed_from: int = 0
    transferred: int = 0


def sidecar_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done.json")


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _finished(dest: Path) -> DownloadResult | None:
    try:
        data = json.loads(sidecar_path(dest).read_text())
    except (OSError, ValueError):
        return None
    if dest.is_file() and dest.stat().st_size == data.get("size"):
        return DownloadResult(**{**data, "resumed_from": 0, "transferred": 0})
    return None


def _hash_file(path: Path, length: int, chunk: int = 4 << 20) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        remaining = length
        while remaining:
            block = handle.read(min(chunk, remaining))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest


def _check_status(response: aiohttp.ClientResponse, url_kind: str) -> None:
    if response.status in (401, 403):
        raise PermanentError(f"export server refused the token for the {url_kind} volume (HTTP {response.status})")
    if response.status >= 500:
        raise PipelineError(f"export server answered HTTP {response.status} for the {url_kind} volume")
    if response.status >= 400:
        raise PermanentError(f"export server answered HTTP {response.status} for the {url_kind} volume")


def _finish(dest: Path, part: Path, size: int, digest: str, fmt: str, expected_size: int | None,
            expected_sha256: str | None, resumed_from: int, transferred: int) -> DownloadResult:
    if expected_size is not None and size != expected_size:
        part.unlink(missing_ok=True)
        raise PermanentError(f"downloaded {size} bytes, expected {expected_size}")
    if expected_sha256 is not None and digest != expected_sha256.removeprefix("sha256:"):
        part.unlink(missing_ok=True)
        raise PermanentError(f"downloaded disk has sha256 {digest}, expected {expected_sha256}")
    os.replace(part, dest)
    result = DownloadResult(str(dest), size, digest, fmt, resumed_from, transferred)
    sidecar_path(dest).write_text(json.dumps({k: v for k, v in asdict(result).items()
                                              if k not in ("resumed_from", "transferred")}))
    return result


async def download_raw(
    session: aiohttp.ClientSession, url: str, dest: Path, token: str | None, *,
    chunk_size: int = DEFAULT_CHUNK, expected_size: int | None = None, expected_sha256: str | None = None,
    progress: ProgressCallback = ignore,
) -> DownloadResult:
    done = _finished(dest)
    if done:
        return done
    part = partial_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    offset = have - have % chunk_size
    with part.open("ab") as handle:
        handle.truncate(offset)
    digest = _hash_file(part, offset)
    headers = {TOKEN_HEADER: token} if token else {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    transferred = 0
    async with session.get(url, headers=headers) as response:
        if response.status == 416:
            match = _UNSATISFIED_RE.match(response.headers.get("Content-Range", ""))
            if match and int(match[1]) == offset:
                return _finish(dest, part, offset, digest.hexdigest(), "raw", expected_size, expected_sha256,
                               offset, 0)
            raise PipelineError(f"export server refused the range from byte {offset}")
        _check_status(response, "raw")
        if response.status == 206:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match[1]) != offset:
                raise PipelineError(f"export server answered an unexpected range {match and match[0]!r}")
            total = int(match[3]) if match[3] != "*" else None
        else:  # 200: the server ignored the range; start over
            offset = 0
            digest = hashlib.sha256()
            total = response.content_length
        with part.open("r+b" if offset else "wb") as handle:
            handle.seek(offset)
            handle.truncate()
            written = offset
            try:
                async for block in response.content.iter_chunked(chunk_size):
                    handle.write(block)
                    digest.update(block)
                    written += len(block)
                    transferred += len(block)
                    progress(Progress("download", written, total))
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise PipelineError(
                    f"download of the raw volume cut at {written} bytes ({exc.__class__.__name__}); "
                    "a retry on this worker resumes from the partial file"
                ) from exc
    if total is not None and written != total:
        raise PipelineError(f"download ended at {written} of {total} bytes; a retry resumes")
    return _finish(dest, part, written, digest.hexdigest(), "raw", expected_size, expected_sha256, offset,
                   transferred)


async def download_gzip(
    session: aiohttp.ClientSession, url: str, dest: Path, token: str | None, *,
    chunk_size: int = DEFAULT_CHUNK, expected_size: int | None = None, expected_sha256: str | None = None,
    progress: ProgressCallback = ignore,
) -> DownloadResult:
    """`gzip` has no Range support in the export server: every attempt starts from byte zero."""
    done = _finished(dest)
    if done:
        return done
    part = partial_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    headers = {TOKEN_HEADER: token} if token else {}
    # auto_decompress off: the export server sends a .gz file, not a Content-Encoding.
    async with session.get(url, headers=headers, auto_decompress=False) as response:
        _check_status(response, "gzip")
        inflater = zlib.decompressobj(wbits=31)
        digest = hashlib.sha256()
        written = transferred = 0
        with part.open("wb") as handle:
            try:
                async for block in response.content.iter_chunked(chunk_size):
                    transferred += len(block)
                    data = inflater.decompress(block)
                    handle.write(data)
                    digest.update(data)
                    written += len(data)
                    progress(Progress("download", transferred, response.content_length, "gzip"))
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise PipelineError(f"download of the gzip volume cut after {transferred} bytes; "
                                    "a retry starts over (gzip has no Range)") from exc
            except zlib.error as exc:
                raise PipelineError(f"gzip volume is corrupt: {exc}") from exc
            tail = inflater.flush()
            handle.write(tail)
            digest.update(tail)
            written += len(tail)
        if not inflater.eof:
            raise PipelineError("gzip volume ended before its end marker; a retry starts over")
    return _finish(dest, part, written, digest.hexdigest(), "gzip", expected_size, expected_sha256, 0, transferred)


async def download_export(
    raw_url: str | None, gzip_url: str | None, dest: Path, token: str | None, *,
    chunk_size: int = DEFAULT_CHUNK, expected_size: int | None = None, expected_sha256: str | None = None,
    progress: ProgressCallback = ignore, verify_tls: bool | str = True,
) -> DownloadResult:
    """Prefer `raw` (resumable); fall back to `gzip` when raw is not offered or not found."""
    ssl: object = (
        verify_tls if not isinstance(verify_tls, str) else ssl_module.create_default_context(cafile=verify_tls)
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=ssl)) as session:  # type: ignore[arg-type]
        if raw_url:
            try:
                return await download_raw(session, raw_url, dest, token, chunk_size=chunk_size,
                                          expected_size=expected_size, expected_sha256=expected_sha256,
                                          progress=progress)
            except PermanentError as exc:
                if gzip_url is None or "HTTP 404" not in str(exc):
                    raise
        if gzip_url:
            return await download_gzip(session, gzip_url, dest, token, chunk_size=chunk_size,
                                       expected_size=expected_size, expected_sha256=expected_sha256,
                                       progress=progress)
    raise PermanentError("the export offers neither a raw nor a gzip volume")
