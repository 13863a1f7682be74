"""Fixtures shared by every test folder: a real S3 server (moto) on 127.0.0.1."""
from __future__ import annotations

import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_bucket(monkeypatch):
    """An empty bucket on a moto S3 server on 127.0.0.1, reached through s3fs; yields ``s3://bucket``."""
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="kiln-test")
    fsspec.AbstractFileSystem.clear_instance_cache()
    try:
        yield "s3://kiln-test"
    finally:
        fsspec.AbstractFileSystem.clear_instance_cache()
        server.stop()
