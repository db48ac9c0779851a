"""Key files (codec keys, API keys, SSH and TLS private keys): refused when others can read them.

One helper for every key file a setting names, so the rule and its message are the same
everywhere. Group-readable is allowed on purpose: a Kubernetes Secret mounted with
`defaultMode: 0440` reaches a non-root worker through the pod's `fsGroup`, which is the group.
The mode checked is the file's, after symlinks (a mounted Secret's key is a symlink into
`..data/`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

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


def secret_setting_text(
    inline: SecretStr | None, file: Path | str | None, setting: str, error: Callable[[str], Exception]
) -> tuple[str, str] | None:
    """(text, where it came from) of a secret given inline as `setting` or in the file named by
    `<setting>_file` (inline wins), or None when neither is set. A key file others may read, or one
    that cannot be read, raises `error` with one line naming the setting and the file."""
    if inline is not None:
        return inline.get_secret_value(), setting
    if file is None:
        return None
    file_setting = f"{setting}_file"
    path = Path(file).expanduser()
    try:
        return read_key_text(path, file_setting), f"{file_setting} {path}"
    except InsecureKeyFile as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"setting {file_setting}: cannot read {path}: {exc.strerror}") from None


def write_private_file_once(path: Path, make_text: Callable[[], str]) -> None:
    """Create `path` (mode 0600 from the start, never wider) holding `make_text()`, unless it exists.
    Written to a temporary file then hard-linked into place, which is exclusive: of two concurrent
    `labrador dev` starts the first one's key stays and the second uses it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(make_text())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
