"""Export download against a real HTTP server: token header, Range resume after a cut, gzip fallback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from image_pipeline.download import download_export
from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress
from tests.images.servers import ExportServer

CHUNK = 256 << 10


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(30)
async def test_cut_at_90_percent_resumes_with_range_and_sends_only_the_rest(
        export_server: ExportServer, tmp_path: Path) -> None:
    size = export_server.disk.stat().st_size
    export_server.cut_at = int(size * 0.9) + 1234  # not on a chunk boundary: a torn tail
    dest = tmp_path / "disk.img"
    reports: list[Progress] = []

    with pytest.raises(PipelineError, match="resumes"):
        await download_export(export_server.raw_url, export_server.gzip_url, dest, export_server.token,
                              chunk_size=CHUNK, progress=reports.append)
    assert reports and reports[-1].total == size

    result = await download_export(export_server.raw_url, export_server.gzip_url, dest, export_server.token,
                                   chunk_size=CHUNK, expected_size=size, expected_sha256=sha256(export_server.disk))
    missing = size - int(size * 0.9) - 1234
    assert export_server.ranges[-1] is not None and export_server.ranges[-1].startswith("bytes=")
    assert result.resumed_from > 0
    assert result.transferred == export_server.sent[-1]
    assert result.transferred <= missing + CHUNK
    assert result.sha256 == sha256(export_server.disk) and sha256(dest) == result.sha256
    assert result.format == "raw"


async def test_finished_download_is_not_fetched_again(export_server: ExportServer, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    first = await download_export(export_server.raw_url, None, dest, export_server.token, chunk_size=CHUNK)
    again = await download_export(export_server.raw_url, None, dest, export_server.token, chunk_size=CHUNK)
    assert len(export_server.sent) == 1
    assert again.sha256 == first.sha256 and again.transferred == 0


async def test_falls_back_to_gzip_when_raw_is_not_offered(export_server: ExportServer, tmp_path: Path) -> None:
    export_server.raw_enabled = False
    result = await download_export(export_server.raw_url, export_server.gzip_url, tmp_path / "d.img",
                                   export_server.token, chunk_size=CHUNK)
    assert result.format == "gzip"
    assert result.sha256 == sha256(export_server.disk)


async def test_wrong_token_is_a_permanent_failure(export_server: ExportServer, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="refused the token"):
        await download_export(export_server.raw_url, None, tmp_path / "d.img", "not-the-token")


async def test_sha256_mismatch_is_refused_and_leaves_no_disk(export_server: ExportServer, tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    with pytest.raises(PermanentError, match="expected"):
        await download_export(export_server.raw_url, None, dest, export_server.token, expected_sha256="0" * 64)
    assert not dest.exists()
