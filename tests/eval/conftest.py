"""Fixtures for evaluation: a tiny real-text dataset, a run trained by `kiln train` (2 DeepSpeed ranks,
two committed checkpoints), a cloze task over the dataset's val documents, and a private Ray."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_shards.tokenizer import train_tokenizer
from support.token_shards import stdlib_texts, write_split

REPO = Path(__file__).resolve().parents[2]
MODEL = {"dim": 32, "layers": 2, "heads": 4, "kv_heads": 2, "seq_len": 32, "multiple_of": 16}
CLOZE = {"n": 40, "context_tokens": 24, "continuation_tokens": 6}


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> str:
    """DATA_URL of a tiny prepared dataset: tokenizer, 36 train documents, 12 val documents."""
    root = tmp_path_factory.mktemp("eval-data")
    texts = stdlib_texts(48)
    tokenizer = train_tokenizer(texts, 512, seed=0, num_threads=1)
    tokenizer.save(str(root))
    docs = [np.append(np.asarray(tokenizer.encode(t), dtype=np.int64), tokenizer.eos_id) for t in texts]
    write_split(root, "train", docs[:36], tokenizer, "eval-tests")
    write_split(root, "val", docs[36:], tokenizer, "eval-tests")
    return str(root)


def write_config(folder: Path, data_url: str, **sections) -> Path:
    """A Kiln config for the tiny run in ``folder/run`` over ``data_url``; sections update the defaults."""
    config = {
        "run": {"name": "eval-tiny", "dir": str(folder / "run"), "seed": 7},
        "data": {"inputs": ["unused-prepared.jsonl"], "output": data_url, "vocab_size": 512},
        "model": dict(MODEL),
        "train": {
            "steps": 6,
            "micro_batch": 2,
            "global_batch": 8,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "checkpoint_every": 3,
            "keep_checkpoints": 3,
            "nproc": 2,
            "zero_stage": 2,
        },
        "eval": {"batch_size": 4, "slice_size": 8},
        "cluster": {"num_cpus": 2},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def kiln(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`kiln ...` in a subprocess; a Ray it starts keeps its files in a temporary folder removed afterwards."""
    ray_tmp = tempfile.mkdtemp(prefix="kray-")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    try:
        return subprocess.run(
            [sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    config: Path
    run_url: str
    data_url: str
    cloze: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, eval_data) -> TrainedRun:
    """`kiln train` on the tiny dataset: committed checkpoints at steps 3 and 6; and a cloze task file."""
    from cluster.evals.cloze import write_cloze

    folder = tmp_path_factory.mktemp("eval-run")
    config = write_config(folder, eval_data)
    proc = kiln("train", str(config), cwd=folder)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    cloze = str(folder / "cloze.jsonl")
    write_cloze(eval_data, cloze, CLOZE["n"], CLOZE["context_tokens"], CLOZE["continuation_tokens"])
    return TrainedRun(folder, config, str(folder / "run"), eval_data, cloze)


@pytest.fixture(scope="module")
def local_ray():
    """A private two-CPU Ray on 127.0.0.1 for one test module."""
    import ray

    ray_tmp = tempfile.mkdtemp(prefix="kray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        _temp_dir=ray_tmp,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def kiln_cli():
    """Run the `kiln` command line in a subprocess (conftest helpers are not importable under importlib)."""
    return kiln


@pytest.fixture(scope="session")
def config_writer():
    return write_config
