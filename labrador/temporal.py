"""Connecting to Temporal the same way from the worker, the client and the CLI.

Every connection uses the pydantic data converter; the payload codec (encryption) is added by
`data_converter()` when codec keys are configured.
"""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from labrador.codec import codec_from_settings
from labrador.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic converter, plus the payload codec when keys are configured (see labrador.codec)."""
    converter = pydantic_data_converter
    codec = codec_from_settings(settings)
    if codec is None:
        return converter
    return dataclasses.replace(converter, payload_codec=codec)


def tls_config(settings: Settings) -> TLSConfig | bool:
    if not settings.temporal_tls:
        return False

    def read(path: object) -> bytes | None:
        return path.read_bytes() if path is not None else None  # type: ignore[attr-defined]

    return TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_ca),
        client_cert=read(settings.temporal_tls_cert),
        client_private_key=read(settings.temporal_tls_key),
    )


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=tls_config(settings),
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
    )
