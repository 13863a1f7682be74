"""SIGTERM to `kiln train` (what SLURM and Kubernetes send before preemption): the ranks save together,
the launcher exits 75 ("requeue me"), and the next `kiln train` continues the identical loss curve."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from launch.corpus import write_corpus

pytestmark = pytest.mark.slow

STEPS = 30


def kiln_cmd(*args):
    return [sys.executable, "-m", "launch.cli", *args]


def curve(run_dir):
    """Loss per step, the last row of each step winning (a resumed run logs each step once anyway)."""
    rows = [json.loads(line) for line in (run_dir / "metrics" / "train.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def wait_for_step(run_dir, step, proc, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    path = run_dir / "metrics" / "train.jsonl"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended before it could be preempted"
        if path.exists() and any(json.loads(line)["step"] >= step for line in path.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def test_sigterm_saves_exits_75_and_the_rerun_continues_the_same_curve(tmp_path):
    write_corpus(str(tmp_path / "corpus"), max_chars=300_000)
    config = {
        "run": {"name": "p", "dir": str(tmp_path / "preempted"), "seed": 5},
        "data": {"inputs": [str(tmp_path / "corpus" / "train-*.jsonl.gz")],
                 "val_inputs": [str(tmp_path / "corpus" / "val-*.jsonl.gz")],
                 "output": str(tmp_path / "data"), "vocab_size": 400, "shard_mb": 0.05},
        "model": {"dim": 32, "layers": 2, "heads": 2, "seq_len": 32},
        "train": {"steps": STEPS, "micro_batch": 2, "global_batch": 4, "nproc": 2, "checkpoint_every": 1000,
                  "warmup_steps": 2},
        "cluster": {"num_cpus": 2},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert subprocess.run(kiln_cmd("prepare", str(path)), cwd=tmp_path, capture_output=True).returncode == 0

    preempted = tmp_path / "preempted"
    proc = subprocess.Popen(kiln_cmd("train", str(path)), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for_step(preempted, 3, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and the ranks
    assert proc.returncode == 75, stderr.decode()[-2000:]
    events = [json.loads(line)["event"] for line in (preempted / "events.jsonl").read_text().splitlines()]
    assert "preemption" in events
    saved_at = int((preempted / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= saved_at < STEPS
    assert (preempted / "checkpoints" / f"step-{saved_at:08d}" / "COMMITTED").exists()

    resumed = subprocess.run(kiln_cmd("train", str(path)), cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = subprocess.run(kiln_cmd("train", str(path), f"run.dir={tmp_path / 'straight'}"), cwd=tmp_path,
                              capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert sorted(curve(preempted)) == list(range(1, STEPS + 1))
    assert curve(preempted) == curve(tmp_path / "straight")
