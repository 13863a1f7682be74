"""A manifest is untrusted input: what it names must stay inside its split folder, and its checksums are digests."""

import json
import os

import pytest

from data_shards.errors import DataError
from data_shards.manifest import load_manifest, manifest_url


@pytest.fixture
def written(tmp_path, kit):
    url = str(tmp_path / "data")
    kit.write_split(url, "train", {"default": [kit.random_docs(0, 5, 500), kit.random_docs(1, 5, 500)]}, with_index=True)
    return url


def rewrite(url: str, change) -> str:
    path = manifest_url(url, "train")
    raw = json.loads(open(path).read())
    change(raw)
    with open(path, "w") as f:
        json.dump(raw, f)
    return path


def test_a_written_manifest_loads(written):
    assert len(load_manifest(written, "train").shards) == 2


ESCAPES = ["../../etc/passwd", "/etc/passwd", "a/../../b.arrow", "s3://other/x.arrow", "", "./x", "a\\..\\b"]


@pytest.mark.parametrize("bad", ESCAPES)
@pytest.mark.parametrize("field", ["path", "index"])
def test_shard_paths_that_leave_the_split_folder_are_rejected_naming_the_manifest(written, bad, field):
    def change(raw):
        raw["shards"][1][field] = bad

    path = rewrite(written, change)
    with pytest.raises(DataError) as err:
        load_manifest(written, "train")
    message = str(err.value)
    assert path in message and f"shards.1.{field}" in message and "relative path" in message
    assert "\n" not in message


@pytest.mark.parametrize("field", ["sha256", "index_sha256"])
@pytest.mark.parametrize("bad", ["../../x", "ABCDEF" * 10 + "ABCD", "0" * 63, "0" * 64 + "/"])
def test_checksum_fields_that_are_not_hex_digests_are_rejected(written, field, bad):
    def change(raw):
        raw["shards"][0][field] = bad

    path = rewrite(written, change)
    with pytest.raises(DataError, match=rf"{path} is not a valid Kiln manifest \(shards\.0\.{field}: .*sha256 hex digest"):
        load_manifest(written, "train")


def test_a_tokenizer_checksum_that_is_not_a_digest_is_rejected(written):
    rewrite(written, lambda raw: raw.update(tokenizer_sha256="not-a-digest"))
    with pytest.raises(DataError, match="tokenizer_sha256: must be a sha256 hex digest"):
        load_manifest(written, "train")


def test_negative_counts_are_rejected(written):
    rewrite(written, lambda raw: raw["shards"][0].update(bytes=-5))
    with pytest.raises(DataError, match="shards.0.bytes"):
        load_manifest(written, "train")


def test_a_manifest_that_is_not_json_is_one_line(written):
    with open(manifest_url(written, "train"), "w") as f:
        f.write("{not json")
    with pytest.raises(DataError, match="not JSON"):
        load_manifest(written, "train")
    assert os.path.exists(manifest_url(written, "train"))
