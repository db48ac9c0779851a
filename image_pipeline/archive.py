"""Optional archive of the raw export to S3 (boto3 managed transfer = multipart upload)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image_pipeline.errors import PermanentError, PipelineError
from image_pipeline.progress import Progress, ProgressCallback, ignore


@dataclass(frozen=True)
class ArchiveResult:
    bucket: str
    key: str
    size: int
    etag: str


def archive_to_s3(path: Path, bucket: str, key: str, *, endpoint_url: str | None = None,
                  region: str | None = None, part_size: int = 64 << 20,
                  progress: ProgressCallback = ignore) -> ArchiveResult:
    """Upload in `part_size` parts (S3 minimum 5 MiB); an object of the same size is left alone."""
    import boto3
    import boto3.exceptions
    import botocore.exceptions
    from boto3.s3.transfer import TransferConfig

    size = path.stat().st_size
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] == size:
            return ArchiveResult(bucket, key, size, head["ETag"].strip('"'))
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise _mapped(exc, bucket) from exc
    sent = 0

    def callback(count: int) -> None:
        nonlocal sent
        sent += count
        progress(Progress("archive", sent, size))

    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)
    try:
        s3.upload_file(str(path), bucket, key, Config=config, Callback=callback)
        head = s3.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as exc:
        raise _mapped(exc, bucket) from exc
    except boto3.exceptions.S3UploadFailedError as exc:  # wraps the client error
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, botocore.exceptions.ClientError):
            raise _mapped(inner, bucket) from exc
        raise PipelineError(f"S3 archive to s3://{bucket}/{key} failed: {exc}") from exc
    return ArchiveResult(bucket, key, size, head["ETag"].strip('"'))


def _mapped(exc: Exception, bucket: str) -> Exception:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    if code in ("NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return PermanentError(f"S3 archive refused for bucket {bucket}: {code}")
    return PipelineError(f"S3 archive failed for bucket {bucket}: {code or exc}")
