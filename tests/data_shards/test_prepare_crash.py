"""A prepare killed at an arbitrary moment finishes on the next run with every document exactly once."""

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pyarrow as pa
import pytest

from data_shards.config import DataConfig
from data_shards.manifest import load_manifest
from data_shards.partition_work import doc_id
from data_shards.manifest import is_prepared
from data_shards.prepare import prepare

pytestmark = pytest.mark.slow

DRIVER = """
import json, sys, ray
from data_shards.config import DataConfig
from data_shards.prepare import prepare
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, _temp_dir=sys.argv[2])
prepare(DataConfig.model_validate(json.loads(sys.argv[1])), seed=11, progress=False)
"""


@pytest.fixture
def split_corpus(kit, tmp_path):
    """The corpus re-cut into 16 partitions; returns (config, expected doc_ids)."""
    source = kit.corpus_dir(tmp_path / "corpus")
    texts = []
    for path in sorted(source.glob("train-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    parts = 16
    inp = tmp_path / "in"
    inp.mkdir()
    expected = set()
    for p in range(parts):
        chunk = texts[p::parts]
        (inp / f"part-{p:02d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
        expected.update(doc_id(p, i) for i in range(len(chunk)))
    cfg = DataConfig(
        inputs=[str(inp / "*.jsonl")],
        val_fraction=0.1,
        output=str(tmp_path / "out"),
        vocab_size=1000,
        shard_mb=0.2,
        tokenizer_sample_mb=1,
        tokenizer_threads=2,
        max_inflight=1,
    )
    return cfg, expected


def all_doc_ids(data_url):
    ids = []
    for split in ("train", "val"):
        manifest = load_manifest(data_url, split)
        for entry in manifest.shards:
            ids.extend(pa.ipc.open_file(pa.OSFile(f"{data_url}/{split}/{entry.path}")).read_all().column("doc_id").to_pylist())
    return ids


def finished_partitions(work_dir: str) -> int:
    return sum(1 for _, _, files in os.walk(work_dir) for n in files if n.startswith("part-") and n.endswith(".json"))


def kill_tree(proc: subprocess.Popen, family: dict[int, float]) -> None:
    """SIGKILL the driver, then every process it started that is still the same process."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid, created in family.items():
        try:
            child = psutil.Process(pid)
            if child.create_time() == created:
                child.kill()
        except psutil.NoSuchProcess:
            continue


def test_killed_prepare_resumes_without_losing_or_duplicating_documents(split_corpus, local_ray):
    cfg, expected = split_corpus
    markers = os.path.join(cfg.output, "_work")
    ray_tmp = tempfile.mkdtemp(prefix="kray-")  # the killed driver's Ray session folder, removed below
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cfg.model_dump_json(), ray_tmp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    family: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    family.setdefault(child.pid, child.create_time())
                except psutil.NoSuchProcess:
                    continue
            if finished_partitions(markers) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the first prepare ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:
        kill_tree(proc, family)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not is_prepared(cfg.output)
    finished = finished_partitions(markers)
    assert 0 < finished < 16
    summary = prepare(cfg, seed=11, progress=False)
    assert (summary["tokenizer_trained"], summary["partitions_tokenized"]) == (False, 16 - finished)
    ids = all_doc_ids(cfg.output)
    assert len(ids) == len(set(ids))
    assert set(ids) == expected
