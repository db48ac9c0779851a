"""Payload encryption (AES-GCM) for everything labrador stores in Temporal.

The worker, the client, the CLI and the codec server all build the same codec from settings:
- `codec_keys`: "id:base64key[,id:base64key...]" (16, 24 or 32-byte AES keys). The FIRST key encrypts;
  every listed key decrypts. Rotation: put the new key first, keep the old ones until no open history
  needs them.
- `codec_keys_file`: a file holding the same text (commas or newlines between keys), e.g. a mounted
  Kubernetes Secret. Used when `codec_keys` is unset.

An encrypted payload has metadata `encoding: binary/encrypted` and `encryption-key-id: <id>`; its data
is a 12-byte random nonce followed by the AES-GCM ciphertext of the serialized original Payload, with
the key ID as associated data (a payload cannot be relabelled to another key). Payloads that are not
encrypted pass through decode untouched, so histories written before encryption stay readable.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from cluster.secret_files import secret_setting_text, write_private_file_once
from labrador.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
DEV_KEYS_FILE = "codec.keys"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


KEYS_CONFIGURED_WHERE = (
    "set codec_keys or codec_keys_file (environment LABRADOR_CODEC_KEYS / LABRADOR_CODEC_KEYS_FILE, or the "
    "config file); `labrador dev` publishes its key file in its state file"
)


class CodecError(ValueError):
    """Bad key configuration or a payload this codec cannot decrypt."""


class MissingCodecKey(CodecError):
    """An encrypted payload reached a client or worker that has no key for it. One line: the key id
    and where keys are configured."""

    def __init__(self, key_id: str, configured: Sequence[str] = ()) -> None:
        self.key_id = key_id
        if configured:
            super().__init__(f"payloads here are encrypted with codec key {key_id!r}, which is not among the "
                             f"configured keys ({', '.join(configured)}): add it to codec_keys or codec_keys_file")
        else:
            super().__init__(f"payloads here are encrypted with codec key {key_id!r} and no codec key is "
                             f"configured: {KEYS_CONFIGURED_WHERE}")


def parse_keys(text: str, source: str = "codec_keys") -> list[tuple[str, bytes]]:
    """'id:base64[,id:base64]' -> [(id, key)], first one encrypts. Errors name the entry, never the key."""
    keys: list[tuple[str, bytes]] = []
    for position, entry in enumerate(e.strip() for e in re.split(r"[,\n]", text)):
        if not entry:
            continue
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep or not _KEY_ID_RE.fullmatch(key_id):
            raise CodecError(f"setting {source}: entry {position + 1} is not 'id:base64key' with an id of "
                             "letters, digits, '.', '_' or '-'")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise CodecError(f"setting {source}: key {key_id!r} is not valid base64") from None
        if len(key) not in (16, 24, 32):
            raise CodecError(f"setting {source}: key {key_id!r} is {len(key)} bytes; AES needs 16, 24 or 32")
        if any(existing == key_id for existing, _ in keys):
            raise CodecError(f"setting {source}: key id {key_id!r} appears twice")
        keys.append((key_id, key))
    if not keys:
        raise CodecError(f"setting {source}: no key")
    return keys


def new_key_entry(key_id: str) -> str:
    """A fresh 256-bit key as an 'id:base64' entry (for operators and the dev stack)."""
    return f"{key_id}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise CodecError("codec: no key")
        self._encrypt_id, encrypt_key = keys[0]
        self._encrypt = AESGCM(encrypt_key)
        self._decrypt = {key_id: AESGCM(key) for key_id, key in keys}

    @property
    def key_id(self) -> str:
        return self._encrypt_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._encrypt.encrypt(nonce, payload.SerializeToString(), self._encrypt_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self._encrypt_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._decrypt.get(key_id)
        if cipher is None:
            raise MissingCodecKey(key_id, sorted(self._decrypt))
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except Exception:  # cryptography's InvalidTag says nothing more useful
            raise CodecError(
                f"a payload encrypted with codec key {key_id!r} does not decrypt with the configured key of that "
                f"id: the key differs (check codec_keys / codec_keys_file), or the payload is corrupt or tampered"
            ) from None
        return Payload.FromString(plain)


class KeylessCodec(PayloadCodec):
    """The codec of a process with no keys: plaintext out, plaintext in, and an encrypted payload is a
    MissingCodecKey naming its key (instead of the converter's `KeyError: 'Unknown payload encoding'`)."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        for payload in payloads:
            if payload.metadata.get("encoding") == ENCODING:
                raise MissingCodecKey(payload_key_id(payload))
        return list(payloads)


def payload_key_id(payload: Payload) -> str:
    return payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace") or "?"


def undecodable_message(exc: BaseException) -> str | None:
    """The one line to show when `exc` (or what caused it) is a payload this process cannot decode."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CodecError):
            return " ".join(str(current).split())
        if isinstance(current, KeyError) and "binary/encrypted" in str(current):
            return f"payloads here are encrypted and no codec key is configured: {KEYS_CONFIGURED_WHERE}"
        nxt = getattr(current, "cause", None)
        current = nxt if isinstance(nxt, BaseException) else (current.__cause__ or current.__context__)
    return None


def keys_text(settings: Settings) -> tuple[str, str] | None:
    """(text, where it came from) of the configured keys, or None."""
    return secret_setting_text(settings.codec_keys, settings.codec_keys_file, "codec_keys", CodecError)


def codec_from_settings(settings: Settings) -> PayloadCodec | None:
    """The codec when keys are configured, else None (payloads in plaintext: development only)."""
    found = keys_text(settings)
    if found is None:
        return None
    text, source = found
    return EncryptionCodec(parse_keys(text, source))


def ensure_dev_codec_keys(settings: Settings) -> Settings:
    """For `labrador dev`: unless keys are configured, generate one into the data dir (once, 0600) and
    return settings pointing at it, so dev histories are encrypted like production ones. Publish the
    returned settings' `codec_keys_file` in the dev state so CLI commands pick it up."""
    if settings.codec_keys is not None or settings.codec_keys_file is not None:
        return settings
    path = settings.data_dir.expanduser() / DEV_KEYS_FILE
    write_private_file_once(path, lambda: new_key_entry("dev1") + "\n")
    return settings.model_copy(update={"codec_keys_file": path})
