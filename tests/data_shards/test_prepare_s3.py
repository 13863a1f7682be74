"""prepare() and the readers against S3 (a moto server on 127.0.0.1, reached through s3fs)."""

import os
import shutil
import tempfile

import numpy as np
import pytest
import ray

from data_shards.config import DataConfig, ReadConfig
from data_shards.errors import DataError
from data_shards.loader import GlobalBatchLoader, eval_windows
from data_shards.manifest import load_manifest
from data_shards.manifest import is_prepared
from data_shards.prepare import prepare
from ops import storage

pytestmark = pytest.mark.slow

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture
def s3_ray(s3_bucket):
    """Ray whose workers see the same S3 endpoint and credentials as this process."""
    ray_tmp = tempfile.mkdtemp(prefix="kray-")  # its session folder, removed with it (not /tmp/ray)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {k: os.environ[k] for k in AWS_VARS}},
        _temp_dir=ray_tmp,
    )
    try:
        yield s3_bucket
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def config(inputs, val_inputs, output):
    return DataConfig(
        inputs=inputs,
        val_inputs=val_inputs,
        output=output,
        vocab_size=800,
        shard_mb=0.3,
        tokenizer_sample_mb=1,
        tokenizer_threads=2,
    )


def test_prepare_reads_and_writes_s3_and_matches_a_local_prepare(s3_ray, kit, tmp_path):
    bucket = s3_ray
    corpus = kit.corpus_dir(tmp_path / "corpus")
    for name in ("train-00.jsonl.gz", "train-01.jsonl.gz", "val-00.jsonl.gz"):
        storage.write_bytes(f"{bucket}/corpus/{name}", (corpus / name).read_bytes())
    remote = config([f"{bucket}/corpus/train-*.jsonl.gz"], [f"{bucket}/corpus/val-00.jsonl.gz"], f"{bucket}/data")
    assert not is_prepared(remote.output)
    summary = prepare(remote, seed=2, progress=False)
    assert is_prepared(remote.output)
    assert summary["train_shards"] > 1
    local = config([str(corpus / "train-0[01].jsonl.gz")], [str(corpus / "val-00.jsonl.gz")], str(tmp_path / "local"))
    prepare(local, seed=2, progress=False)
    for split in ("train", "val"):
        a, b = load_manifest(remote.output, split), load_manifest(local.output, split)
        assert [(s.sha256, s.tokens) for s in a.shards] == [(s.sha256, s.tokens) for s in b.shards]
    for mode in ("global", "block"):
        read = ReadConfig(shuffle=mode, block_shards=2)
        from_s3 = GlobalBatchLoader(remote.output, "train", seed=2, seq_len=64, global_batch=4, read=read)
        from_disk = GlobalBatchLoader(local.output, "train", seed=2, seq_len=64, global_batch=4, read=read)
        for _ in range(3):
            assert np.array_equal(from_s3.next_batch(), from_disk.next_batch())
        from_s3.close()
    assert np.array_equal(eval_windows(remote.output, "val", 0, 64), eval_windows(local.output, "val", 0, 64))


def test_damaged_s3_shard_is_a_data_error_naming_it(s3_ray, kit, tmp_path):
    bucket = s3_ray
    corpus = kit.corpus_dir(tmp_path / "corpus")
    storage.write_bytes(f"{bucket}/corpus/train-00.jsonl.gz", (corpus / "train-00.jsonl.gz").read_bytes())
    cfg = config([f"{bucket}/corpus/train-00.jsonl.gz"], [f"{bucket}/corpus/train-00.jsonl.gz"], f"{bucket}/data")
    prepare(cfg, seed=0, progress=False)
    manifest = load_manifest(cfg.output, "train")
    url = manifest.shard_location(0).url
    raw = bytearray(storage.read_bytes(url))
    raw[len(raw) // 3] ^= 0x10
    storage.write_bytes(url, bytes(raw))
    loader = GlobalBatchLoader(
        cfg.output, "train", seed=0, seq_len=64, global_batch=4, read=ReadConfig(shuffle="global")
    )  # reads index files only
    with pytest.raises(DataError, match=f"shard {url} is damaged"):
        for _ in range(loader.sources[0].samples_per_epoch // 4 + 1):
            loader.next_batch()
    cached = os.path.join(os.environ["KILN_CACHE_DIR"], "shards", f"{manifest.shards[0].sha256}.arrow")
    assert not os.path.exists(cached)  # the bad download is not kept
