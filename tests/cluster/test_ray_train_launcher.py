"""Ray Train launches the same per-rank loop as torchrun: same loss curve, same committed checkpoints."""
import json
import subprocess
import sys

import pytest
import yaml

from launch.corpus import write_corpus

pytestmark = pytest.mark.slow


def kiln(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics" / "train.jsonl").read_text().splitlines()]


def test_ray_train_launcher_reproduces_the_torchrun_loss_curve(tmp_path):
    write_corpus(str(tmp_path / "corpus"), max_chars=300_000)
    config = {
        "run": {"name": "ray", "dir": str(tmp_path / "local"), "seed": 3},
        "data": {"inputs": [str(tmp_path / "corpus" / "train-*.jsonl.gz")],
                 "val_inputs": [str(tmp_path / "corpus" / "val-*.jsonl.gz")],
                 "output": str(tmp_path / "data"), "vocab_size": 400, "shard_mb": 0.05},
        "model": {"dim": 32, "layers": 2, "heads": 2, "seq_len": 32},
        "train": {"steps": 4, "micro_batch": 2, "global_batch": 4, "nproc": 2, "checkpoint_every": 2, "warmup_steps": 2},
        "cluster": {"num_cpus": 2},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert kiln("prepare", str(path), cwd=tmp_path).returncode == 0
    local = kiln("train", str(path), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    on_ray = kiln("train", str(path), "train.launcher=ray", f"run.dir={tmp_path / 'ray'}", cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    assert len(losses(tmp_path / "local")) == 4
    assert losses(tmp_path / "ray") == losses(tmp_path / "local")
    assert (tmp_path / "ray" / "checkpoints" / "step-00000004" / "COMMITTED").exists()
    assert (tmp_path / "ray" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
