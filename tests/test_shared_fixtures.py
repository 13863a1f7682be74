"""Fixtures shared across folders leave nothing behind for the next test, whatever the order tests run in."""

import pytest

from ops import storage


@pytest.mark.parametrize("writer", ["first", "second"])
def test_each_s3_bucket_starts_empty_though_moto_keeps_one_store_per_process(s3_bucket, writer):
    assert storage.list_names(s3_bucket) == []
    storage.write_text(f"{s3_bucket}/runs/same-key/config.yaml", writer)
    assert storage.list_names(s3_bucket) == ["runs"]
