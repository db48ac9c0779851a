"""Key files (codec keys, API keys, SSH and TLS private keys): refused when others can read them.

One helper for every key file a setting names, so the rule and its message are the same
everywhere. Group-readable is allowed on purpose: a Kubernetes Secret mounted with
`defaultMode: 0440` reaches a non-root worker through the pod's `fsGroup`, which is the group.
The mode checked is the file's, after symlinks (a mounted Secret's key is a symlink into
`..data/`).
"""

from __future__ import annotations

import stat
from pathlib import Path

OTHERS = stat.S_IRWXO


class InsecureKeyFile(ValueError):
    """A key file that users other than its owner and group may read or change."""


def check_key_file(path: Path | str, setting: str) -> Path:
    """Raise InsecureKeyFile (one line naming the setting, the file and its mode) when the file is
    readable, writable or executable by others; return the path. A missing file is left to the
    reader (its own "cannot read" message)."""
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        return path
    if mode & OTHERS:
        raise InsecureKeyFile(
            f"setting {setting}: {path} has mode {stat.S_IMODE(mode):04o}, so every user of this machine can "
            f"read it; make it 0600 or 0640 (chmod o-rwx {path})")
    return path


def read_key_text(path: Path | str, setting: str) -> str:
    """The text of a key file, after `check_key_file`. OSError is the caller's to word."""
    return check_key_file(path, setting).read_text()


def read_key_bytes(path: Path | str, setting: str) -> bytes:
    return check_key_file(path, setting).read_bytes()
