"""qemu-img convert + check on small generated disks."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_pipeline.convert import convert_to_qcow2, disk_info
from image_pipeline.errors import PermanentError
from tests.images.servers import make_raw_disk


async def test_raw_disk_becomes_a_checked_compressed_qcow2(tmp_path: Path) -> None:
    raw = make_raw_disk(tmp_path / "d.raw", 16 << 20, 1 << 20)
    fractions: list[float] = []
    result = await convert_to_qcow2(raw, tmp_path / "d.qcow2", progress=lambda p: fractions.append(p.done))
    info = await disk_info(Path(result.path))
    assert info.format == "qcow2" and info.backing_file is None
    assert result.virtual_size == 16 << 20 == info.virtual_size
    assert result.size < 4 << 20  # zeros compress away
    again = await convert_to_qcow2(raw, tmp_path / "d.qcow2")
    assert again == result


async def test_a_corrupt_disk_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\xff" * 4096)  # qcow2 magic, nonsense header
    with pytest.raises(PermanentError):
        await convert_to_qcow2(bad, tmp_path / "out.qcow2")
    assert not (tmp_path / "out.qcow2").exists()
