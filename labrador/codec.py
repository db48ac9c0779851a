"""Payload encryption (AES-GCM). Placeholder until the credentials issue fills it in."""

from __future__ import annotations

from temporalio.converter import PayloadCodec

from labrador.settings import Settings


def codec_from_settings(settings: Settings) -> PayloadCodec | None:
    return None
