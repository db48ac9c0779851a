"""API keys: `scope:key` entries, several per scope (rotation), compared in constant time.

A key is never logged nor stored in Temporal; what identifies a caller (e.g. the one that started a
lab) is `key_id`, a short hash of the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from cluster.secret_files import secret_setting_text, write_private_file_once
from labrador.settings import Settings


class Scope(StrEnum):
    APP = "app"  # students' lab operations
    ADMIN = "admin"  # bulk actions, the pool (and everything app may do)


class KeyConfigError(ValueError):
    """Bad api_keys / api_keys_file; the message names the entry, never the key."""


@dataclass(frozen=True)
class ApiKey:
    scope: Scope
    digest: bytes  # sha256 of the key: what is compared, so every comparison has the same length

    @property
    def key_id(self) -> str:
        return self.digest.hex()[:16]

    def allows(self, needed: Scope) -> bool:
        return self.scope == Scope.ADMIN or self.scope == needed


_MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str, source: str = "api_keys") -> list[ApiKey]:
    keys: list[ApiKey] = []
    for position, entry in enumerate(e.strip() for e in re.split(r"[,\n]", text)):
        if not entry or entry.startswith("#"):
            continue
        scope, sep, key = entry.partition(":")
        if not sep or scope.strip() not in {s.value for s in Scope}:
            raise KeyConfigError(f"setting {source}: entry {position + 1} is not 'scope:key' with scope app or admin")
        key = key.strip()
        if len(key) < _MIN_KEY_LENGTH:
            raise KeyConfigError(f"setting {source}: entry {position + 1} has a key shorter than "
                                 f"{_MIN_KEY_LENGTH} characters")
        keys.append(ApiKey(Scope(scope.strip()), _digest(key)))
    return keys


def keys_from_settings(settings: Settings) -> list[ApiKey]:
    found = secret_setting_text(settings.api_keys, settings.api_keys_file, "api_keys", KeyConfigError)
    if found is None:
        return []
    text, source = found
    return parse_keys(text, source)


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The configured key matching `presented`; every key is compared (no early exit on a match)."""
    digest = _digest(presented)
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found


def new_keys_text() -> str:
    return "".join(f"{scope.value}:{secrets.token_urlsafe(32)}\n" for scope in Scope)


DEV_KEYS_FILE = "api.keys"


def ensure_dev_api_keys(settings: Settings) -> Settings:
    """For `labrador dev`: unless keys are configured, one key per scope in a 0600 file in the data dir."""
    if settings.api_keys is not None or settings.api_keys_file is not None:
        return settings
    path = settings.data_dir.expanduser() / DEV_KEYS_FILE
    write_private_file_once(path, new_keys_text)
    return settings.model_copy(update={"api_keys_file": path})
