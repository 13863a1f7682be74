"""Training data streamed from S3 (a moto server on 127.0.0.1, through s3fs) via the node's bounded shard cache."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from data_shards.config import ReadConfig
from data_shards.errors import DataError
from data_shards.loader import GlobalBatchLoader
from data_shards.manifest import load_manifest
from ops import storage
from support.kiln_cli import kiln_train
from support.s3_endpoint import upload_folder

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SHARDS = 12
SEQ = 16

READER = """
import json, sys
import numpy as np
from data_shards.config import ReadConfig
from data_shards.loader import GlobalBatchLoader
url, rank, world, read, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
batches = int(sys.argv[6])
loader = GlobalBatchLoader(url, "train", seed=4, seq_len=16, global_batch=4, dp_rank=rank, dp_world=world,
                           read=ReadConfig.model_validate_json(read))
np.save(out, np.stack([loader.next_batch() for _ in range(batches)]))
loader.close()
print(json.dumps({"downloads": loader.store.cache.downloads}), flush=True)
sys.stdin.read()  # stay up until the test has looked at the cache
"""


@pytest.fixture
def copies(s3_bucket, tmp_path, kit):
    """One split, on local disk and in the bucket: (local url, s3 url, largest shard in bytes)."""
    docs = kit.random_docs(3, SHARDS * 20, 500, min_len=20, max_len=120)
    local = str(tmp_path / "local")
    shards = [docs[i * 20 : (i + 1) * 20] for i in range(SHARDS)]
    manifest = kit.write_split(local, "train", {"default": shards}, with_index=True)
    upload_folder(local, f"{s3_bucket}/data")
    return local, f"{s3_bucket}/data", max(s.bytes for s in manifest.shards)


def shards_folder(cache: Path) -> tuple[int, set[str]]:
    """What the cache limit bounds, measured from outside: the sizes of everything in the shards
    folder; and the names of the complete shards there."""
    total, names = 0, set()
    for entry in os.scandir(cache / "shards") if (cache / "shards").exists() else []:
        try:
            total += entry.stat().st_size
        except FileNotFoundError:
            continue
        if entry.name.endswith(".arrow"):
            names.add(entry.name)
    return total, names


class CacheSampler:
    """Samples the cache's size from a thread of the test while processes use it."""

    def __init__(self, cache: Path):
        self.cache, self.samples, self.seen = cache, [], set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.002)

    def sample(self) -> int:
        size, names = shards_folder(self.cache)
        self.samples.append(size)
        self.seen |= names
        return size

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("mode", ["global", "block"])
def test_a_cache_smaller_than_the_data_gives_the_same_batches_as_a_local_copy(copies, mode):
    local, remote, largest = copies
    limit_gb = 4 * largest / 1e9
    read = ReadConfig(shuffle=mode, block_shards=1, cache_limit_gb=limit_gb)
    streamed = GlobalBatchLoader(remote, "train", seed=4, seq_len=SEQ, global_batch=2, read=read)
    on_disk = GlobalBatchLoader(local, "train", seed=4, seq_len=SEQ, global_batch=2, read=read)
    batches = streamed.sources[0].samples_per_epoch * 3 // 2 // 2  # one and a half epochs
    try:
        for _ in range(batches):
            assert np.array_equal(streamed.next_batch(), on_disk.next_batch())
            assert streamed.store.cache.usage() <= 4 * largest
        assert streamed.store.cache.downloads > 4  # shards were evicted and fetched again
    finally:
        streamed.close()


def test_two_ranks_of_a_node_share_one_bounded_cache_and_read_what_a_local_copy_gives(copies, tmp_path):
    local, remote, largest = copies
    limit = 4 * largest
    read = ReadConfig(shuffle="block", block_shards=1, cache_limit_gb=limit / 1e9)
    cache = tmp_path / "node-cache"
    env = {**os.environ, "KILN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    sampler = CacheSampler(cache)
    batches = load_manifest(remote, "train").total_tokens // SEQ // 4  # about an epoch
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                remote,
                str(rank),
                "2",
                read.model_dump_json(),
                str(tmp_path / f"rank{rank}.npy"),
                str(batches),
            ],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = []
        for proc in procs:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
            results.append(json.loads(line))
        during = sampler.sample()  # both readers are still up, holding the cache as they left it
    finally:
        sampler.stop()
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=60)
    assert 0 < during <= limit
    assert max(sampler.samples) <= limit
    assert sum(r["downloads"] for r in results) >= SHARDS  # every shard came through a cache that holds 4
    for rank in range(2):
        reference = GlobalBatchLoader(local, "train", seed=4, seq_len=SEQ, global_batch=4, dp_rank=rank, dp_world=2, read=read)
        expected = np.stack([reference.next_batch() for _ in range(batches)])
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), expected)


def test_a_node_downloads_each_shard_once_for_all_its_ranks(copies, tmp_path):
    _, remote, largest = copies
    read = ReadConfig(shuffle="block", block_shards=2, cache_limit_gb=SHARDS * largest / 1e9)
    env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path / "node-cache"), "PYTHONPATH": str(REPO)}
    batches = 2 * load_manifest(remote, "train").total_tokens // SEQ // 4  # about two epochs: every shard is read
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                READER,
                remote,
                str(rank),
                "2",
                read.model_dump_json(),
                str(tmp_path / f"rank{rank}.npy"),
                str(batches),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-3000:] for _, err in outputs]
    downloads = [json.loads(out.splitlines()[-1])["downloads"] for out, _ in outputs]
    assert sum(downloads) == SHARDS


def test_a_shard_damaged_in_the_bucket_is_a_data_error_naming_it(copies):
    _, remote, largest = copies
    manifest = load_manifest(remote, "train")
    url = manifest.shard_location(5).url
    raw = bytearray(storage.read_bytes(url))
    raw[len(raw) // 2] ^= 0x01
    storage.write_bytes(url, bytes(raw))
    loader = GlobalBatchLoader(
        remote,
        "train",
        seed=4,
        seq_len=SEQ,
        global_batch=2,
        read=ReadConfig(shuffle="block", block_shards=1, cache_limit_gb=4 * largest / 1e9),
    )
    try:
        with pytest.raises(DataError, match=f"shard {url} is damaged: its sha256 does not match the manifest"):
            for _ in range(loader.sources[0].samples_per_epoch // 2 + 1):
                loader.next_batch()
        assert not any(manifest.shards[5].sha256 in name for name in os.listdir(loader.store.cache.folder))
    finally:
        loader.close()


def train(job, tmp_path: Path, cache: Path, name: str) -> subprocess.Popen:
    from llm.devices import rank_environment

    job_path = tmp_path / f"{name}.json"
    job.save(str(job_path))
    env = {**rank_environment(2), "KILN_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(tmp_path / f"{name}-torchrun"),
        "-m",
        "llm.trainer",
        str(job_path),
    ]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_two_rank_run_from_s3_within_its_cache_limit_has_the_loss_curve_of_a_run_from_a_local_copy(copies, tmp_path):
    from llm.config import ModelConfig, TrainConfig
    from llm.job import TrainJob
    from ops.records import RunRecords

    local, remote, largest = copies
    limit = 4 * largest
    read = ReadConfig(shuffle="block", block_shards=1, cache_limit_gb=limit / 1e9)
    model = ModelConfig(dim=32, layers=2, heads=4, kv_heads=2, seq_len=32, multiple_of=16)
    steps = 24
    settings = TrainConfig(
        steps=steps,
        micro_batch=4,
        global_batch=8,
        lr=3e-3,
        warmup_steps=2,
        nproc=2,
        zero_stage=2,
        checkpoint_every=1000,
        checkpoint_at_end=False,
    )
    curves = {}
    for name, data_url in (("local", local), ("s3", remote)):
        job = TrainJob(
            run_dir=str(tmp_path / f"run-{name}"),
            data_url=data_url,
            read=read,
            seed=3,
            config_hash=name,
            model=model,
            train=settings,
        )
        cache = tmp_path / f"cache-{name}"
        sampler = CacheSampler(cache)
        proc = train(job, tmp_path, cache, name)
        try:
            output, _ = proc.communicate(timeout=900)
        finally:
            sampler.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, output[-4000:]
        curves[name] = [row["loss"] for row in RunRecords(job.run_dir).metrics()]
        if name == "s3":
            assert 0 < max(sampler.samples) <= limit
            assert len(sampler.seen) > 4  # more shards passed through the cache than it holds
    assert len(curves["s3"]) == steps
    assert curves["s3"] == curves["local"]


def test_a_cache_too_small_for_two_blocks_is_refused_naming_the_keys(copies):
    _, remote, largest = copies
    read = ReadConfig(shuffle="block", block_shards=4, cache_limit_gb=5 * largest / 1e9)
    with pytest.raises(DataError, match=r"cache_limit_gb=.* is too small for data.shuffle=block with data.block_shards=4"):
        GlobalBatchLoader(remote, "train", seed=4, seq_len=SEQ, global_batch=2, read=read)


def test_kiln_train_refuses_a_cache_too_small_for_the_block_shuffle_in_one_line_before_any_rank_starts(copies, kit, tmp_path):
    local, remote, largest = copies
    kit.write_split(local, "val", {"default": [kit.random_docs(4, 5, 500, min_len=20, max_len=60)]})
    upload_folder(f"{local}/val", f"{remote}/val")
    config = {
        "run": {"dir": str(tmp_path / "run")},
        "data": {
            "output": remote,
            "vocab_size": 500,
            "shuffle": "block",
            "block_shards": 4,
            "cache_limit_gb": 5 * largest / 1e9,
        },
        "model": {"dim": 32, "layers": 2, "heads": 2, "seq_len": SEQ},
        "train": {"steps": 2, "micro_batch": 2, "global_batch": 4, "nproc": 2},
    }
    proc = kiln_train(config, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"kiln: error: data.cache_limit_gb={5 * largest / 1e9:g} is too small for data.shuffle=block with "
        f"data.block_shards=4: a node holds up to {9 * largest / 1e9:.3g} GB of shards at once; raise it or lower "
        "data.block_shards"
    ]
    assert not (tmp_path / "run").exists()  # nothing written, no rank started
