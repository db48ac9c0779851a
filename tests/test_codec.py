"""AES-GCM payload codec, key rotation, the data converter, and the codec server over HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.exceptions import ApplicationError

from labrador.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecError,
    EncryptionCodec,
    KeylessCodec,
    codec_from_settings,
    ensure_dev_codec_keys,
    new_key_entry,
    parse_keys,
)
from labrador.codec_server import start
from labrador.settings import Settings
from labrador.temporal import data_converter
from workflows.models import SessionCredentials

OLD = new_key_entry("2026-10")
NEW = new_key_entry("2026-11")
SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-material\n-----END OPENSSH PRIVATE KEY-----"


def codec(text: str) -> EncryptionCodec:
    return EncryptionCodec(parse_keys(text))


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


async def test_round_trip_hides_the_data_and_names_the_key() -> None:
    subject = codec(NEW)
    [sealed] = await subject.encode([plain(SECRET)])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == b"2026-11"
    assert b"secret-material" not in sealed.SerializeToString()
    [opened] = await subject.decode([sealed])
    assert opened == plain(SECRET)
    [again] = await subject.encode([plain(SECRET)])
    assert again.data != sealed.data  # a fresh nonce every time


async def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    [written_before] = await codec(OLD).encode([plain("before rotation")])
    rotated = codec(f"{NEW},{OLD}")
    [written_after] = await rotated.encode([plain("after rotation")])
    assert written_after.metadata[KEY_ID_METADATA] == b"2026-11"
    assert await rotated.decode([written_before, written_after]) == [plain("before rotation"),
                                                                     plain("after rotation")]
    with pytest.raises(CodecError, match="key '2026-11', which is not among the configured keys"):
        await codec(OLD).decode([written_after])


async def test_tampering_and_relabelling_are_detected() -> None:
    both = codec(f"{NEW},{OLD}")
    [sealed] = await both.encode([plain("x")])
    tampered = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(CodecError, match="corrupt or tampered"):
        await both.decode([tampered])
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID_METADATA: b"2026-10"}, data=sealed.data)
    with pytest.raises(CodecError):
        await both.decode([relabelled])


async def test_unencrypted_payloads_pass_through_decode() -> None:
    assert await codec(NEW).decode([plain("old history")]) == [plain("old history")]


@pytest.mark.parametrize(("text", "message"), [
    ("", "no key"),
    ("nocolon", "entry 1 is not 'id:base64key'"),
    ("k1:!!!", "key 'k1' is not valid base64"),
    (f"k1:{base64.b64encode(b'short').decode()}", "key 'k1' is 5 bytes"),
    (f"{NEW},{NEW}", "appears twice"),
])
def test_bad_keys_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(CodecError, match=message) as info:
        parse_keys(text)
    secret_part = NEW.split(":")[1]
    assert secret_part not in str(info.value)


def test_keys_come_from_the_setting_or_a_mounted_file(tmp_path: Path) -> None:
    assert codec_from_settings(Settings(data_dir=tmp_path)) is None
    from_env = codec_from_settings(Settings(codec_keys=SecretStr(f"{NEW},{OLD}")))
    assert isinstance(from_env, EncryptionCodec) and from_env.key_id == "2026-11"
    secret = tmp_path / "secret" / "keys"
    secret.parent.mkdir()
    secret.write_text(f"{OLD}\n{NEW}\n")  # a Secret's value, one key a line
    secret.chmod(0o440)  # a Secret mounted with defaultMode 0440 (read through fsGroup)
    from_file = codec_from_settings(Settings(codec_keys_file=secret))
    assert isinstance(from_file, EncryptionCodec) and from_file.key_id == "2026-10"
    with pytest.raises(CodecError, match="cannot read"):
        codec_from_settings(Settings(codec_keys_file=tmp_path / "missing"))


def test_dev_key_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = ensure_dev_codec_keys(Settings(data_dir=tmp_path))
    assert settings.codec_keys_file == tmp_path / "codec.keys"
    assert oct(settings.codec_keys_file.stat().st_mode & 0o777) == "0o600"
    first = settings.codec_keys_file.read_text()
    assert ensure_dev_codec_keys(Settings(data_dir=tmp_path)).codec_keys_file.read_text() == first  # type: ignore[union-attr]
    configured = Settings(data_dir=tmp_path, codec_keys=SecretStr(NEW))
    assert ensure_dev_codec_keys(configured) is configured


async def test_data_converter_encrypts_values_and_failure_messages() -> None:
    converter = data_converter(Settings(codec_keys=SecretStr(NEW)))
    [payload] = await converter.encode([SessionCredentials(private_key=SECRET, public_key="ssh-ed25519 AAAA")])
    assert b"secret-material" not in payload.SerializeToString()
    assert (await converter.decode([payload], [SessionCredentials]))[0].private_key == SECRET

    failure = Failure()
    await converter.encode_failure(ApplicationError("setup script 'x' failed: secret-material", type="T"), failure)
    assert b"secret-material" not in failure.SerializeToString()
    decoded = await converter.decode_failure(failure)
    assert "secret-material" in str(decoded)

    assert isinstance(data_converter(Settings()).payload_codec, KeylessCodec)  # no keys: plaintext (dev only)


async def test_codec_server_encodes_and_decodes_over_http() -> None:
    subject = codec(f"{NEW},{OLD}")
    runner, port = await start(subject, "127.0.0.1", 0, ["http://localhost:8233"])
    url = f"http://127.0.0.1:{port}"
    body = {"payloads": [{"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                          "data": base64.b64encode(json.dumps(SECRET).encode()).decode()}]}
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Origin": "http://localhost:8233", "X-Namespace": "default"}
            async with http.post(f"{url}/encode", json=body, headers=headers) as response:
                assert response.status == 200
                assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:8233"
                encoded = await response.json()
            sealed = encoded["payloads"][0]
            assert base64.b64decode(sealed["metadata"]["encoding"]) == ENCODING
            assert "secret-material" not in json.dumps(encoded)
            async with http.post(f"{url}/decode", json=encoded, headers=headers) as response:
                assert response.status == 200
                assert await response.json() == body

            preflight = {"Origin": "http://localhost:8233", "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "content-type,x-namespace"}
            async with http.options(f"{url}/decode", headers=preflight) as response:
                assert response.status == 204
                assert "X-Namespace" in response.headers["Access-Control-Allow-Headers"]
                assert response.headers["Access-Control-Allow-Credentials"] == "true"
            async with http.post(f"{url}/decode", json=body, headers={"Origin": "https://evil.example"}) as response:
                assert "Access-Control-Allow-Origin" not in response.headers
            async with http.post(f"{url}/default/decode", json=encoded) as response:  # namespace-templated path
                assert response.status == 200 and await response.json() == body
            async with http.post(f"{url}/decode", data="not json") as response:
                assert response.status == 400
            foreign = (await codec(new_key_entry("other")).encode([plain("x")]))[0]
            from google.protobuf import json_format
            from temporalio.api.common.v1 import Payloads
            async with http.post(f"{url}/decode", data=json_format.MessageToJson(Payloads(payloads=[foreign]))) as r:
                assert r.status == 400 and "not among the configured keys" in (await r.json())["error"]
    finally:
        await runner.cleanup()


def test_cli_codec_key_and_codec_server_without_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from labrador.cli.main import app

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # no running dev stack leaks its settings in
    monkeypatch.delenv("LABRADOR_CODEC_KEYS", raising=False)
    monkeypatch.delenv("LABRADOR_CODEC_KEYS_FILE", raising=False)
    runner = CliRunner()
    made = runner.invoke(app, ["codec-key", "2027-01", "--json"])
    assert made.exit_code == 0
    assert parse_keys(json.loads(made.stdout)["entry"])[0][0] == "2027-01"
    refused = runner.invoke(app, ["codec-key", "no spaces"])
    assert refused.exit_code == 1
    (tmp_path / "empty.yaml").write_text("{}\n")
    no_keys = runner.invoke(app, ["codec-server", "--config", str(tmp_path / "empty.yaml")])
    assert no_keys.exit_code == 1 and "no codec keys configured" in no_keys.stderr
