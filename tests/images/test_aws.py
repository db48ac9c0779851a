"""S3 multipart archive and the ECR token exchange, against a moto server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from image_pipeline.archive import archive_to_s3
from image_pipeline.auth import ecr_credentials, resolve_credentials
from image_pipeline.errors import PermanentError


def test_archive_uploads_in_parts_and_skips_a_second_time(moto_endpoint: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="disks")
    disk = tmp_path / "export.img"
    disk.write_bytes(os.urandom(12 << 20))
    sent: list[int] = []
    result = archive_to_s3(disk, "disks", "cp/export.img", endpoint_url=moto_endpoint, part_size=5 << 20,
                           progress=lambda p: sent.append(p.done))
    assert result.etag.endswith("-3")  # a multipart ETag names its part count: 5 + 5 + 2 MiB
    assert sent[-1] == 12 << 20
    assert s3.get_object(Bucket="disks", Key="cp/export.img")["Body"].read() == disk.read_bytes()
    again = archive_to_s3(disk, "disks", "cp/export.img", endpoint_url=moto_endpoint, part_size=5 << 20)
    assert again.etag == result.etag


def test_archive_to_a_missing_bucket_is_permanent(moto_endpoint: str, tmp_path: Path) -> None:
    disk = tmp_path / "x.img"
    disk.write_bytes(b"x" * 1024)
    with pytest.raises(PermanentError, match="NoSuchBucket"):
        archive_to_s3(disk, "no-such-bucket", "x", endpoint_url=moto_endpoint)


def test_ecr_token_exchange_gives_registry_credentials(moto_endpoint: str) -> None:
    host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    credentials = ecr_credentials(host, endpoint_url=moto_endpoint)
    assert credentials.username == "AWS" and credentials.password
    assert "password" not in repr(credentials) and credentials.password not in repr(credentials)
    auto = resolve_credentials(host, "auto", aws_endpoint_url=moto_endpoint)
    assert auto is not None and auto.username == "AWS"
