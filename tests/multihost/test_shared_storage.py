"""Hosts share a run through object storage: what one host writes, another host's long-lived process sees."""

import os

import s3fs

from ops import storage


def another_host(bucket_url):
    """An S3 client of its own, as a process on another host has."""
    return s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})


def test_an_object_another_host_writes_after_a_listing_is_seen_by_exists_and_list(s3_bucket):
    run = f"{s3_bucket}/run"
    storage.write_text(f"{run}/config.yaml", "run: {}\n")
    assert storage.list_names(run) == ["config.yaml"]
    assert not storage.exists(f"{run}/events.jsonl")

    another_host(s3_bucket).pipe(f"{s3_bucket.removeprefix('s3://')}/run/events.jsonl", b'{"event": "start"}\n')

    assert storage.exists(f"{run}/events.jsonl")
    assert storage.list_names(run) == ["config.yaml", "events.jsonl"]
    assert storage.read_text(f"{run}/events.jsonl") == '{"event": "start"}\n'
