"""Connecting to Temporal the same way from the worker, the client and the CLI.

Every connection uses the pydantic data converter; the payload codec (encryption) and the failure
converter that encodes failure messages are added by `data_converter()` when codec keys are configured.
"""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from cluster.secret_files import read_key_bytes
from labrador.codec import KeylessCodec, codec_from_settings
from labrador.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic converter, plus, when keys are configured (see labrador.codec), the payload codec
    and a failure converter that moves failure messages and stack traces into an encoded payload
    (a failed setup's reason carries script output)."""
    converter = pydantic_data_converter
    codec = codec_from_settings(settings)
    if codec is None:
        # Without keys an encrypted payload is a one-line MissingCodecKey, not a converter KeyError.
        return dataclasses.replace(converter, payload_codec=KeylessCodec())
    return dataclasses.replace(
        converter, payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    if not settings.temporal_tls:
        return False

    def read(path: object) -> bytes | None:
        return path.read_bytes() if path is not None else None  # type: ignore[attr-defined]

    key = settings.temporal_tls_key
    return TLSConfig(
        server_root_ca_cert=read(settings.temporal_tls_ca),
        client_cert=read(settings.temporal_tls_cert),
        client_private_key=read_key_bytes(key, "temporal_tls_key") if key is not None else None,
    )


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """`runtime`: the worker's SDK runtime when it serves metrics (labrador/metrics.py)."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=tls_config(settings),
        api_key=settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None,
        runtime=runtime,
    )
