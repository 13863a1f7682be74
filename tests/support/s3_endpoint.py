"""This test process's S3 clients pointed at a local moto endpoint that holds one fresh bucket."""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def s3_endpoint(monkeypatch, endpoint: str, bucket: str = "kiln-test") -> Iterator[str]:
    """Credentials and ``AWS_ENDPOINT_URL`` for ``endpoint``, ``bucket`` created there; yields ``s3://bucket``.
    fsspec's cached filesystems are dropped on the way in and out, so none keeps another test's endpoint."""
    import boto3
    import fsspec

    for name, value in (
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        yield f"s3://{bucket}"
    finally:
        fsspec.AbstractFileSystem.clear_instance_cache()


def upload_folder(local_dir: str, url: str) -> None:
    """Copy a local folder to ``url`` (data a test then reads from the bucket)."""
    from ops import storage

    fs, path = storage.filesystem(url)
    fs.put(local_dir.rstrip("/") + "/", path, recursive=True)
