"""Ray Train launches the same per-rank loop as torchrun: same loss curve, same committed checkpoints."""

import subprocess
import sys

import pytest

from ops.records import RunRecords

pytestmark = pytest.mark.slow


def kiln(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def losses(run_dir):
    return [row["loss"] for row in RunRecords(str(run_dir)).metrics()]


def test_ray_train_launcher_reproduces_the_torchrun_loss_curve(tmp_path, tiny_config):
    path = tiny_config(tmp_path, seed=3, run={"dir": str(tmp_path / "local")}, train={"steps": 4, "checkpoint_every": 2})
    assert kiln("prepare", str(path), cwd=tmp_path).returncode == 0
    local = kiln("train", str(path), cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    on_ray = kiln("train", str(path), "train.launcher=ray", f"run.dir={tmp_path / 'ray'}", cwd=tmp_path)
    assert on_ray.returncode == 0, on_ray.stderr
    assert len(losses(tmp_path / "local")) == 4
    assert losses(tmp_path / "ray") == losses(tmp_path / "local")
    assert (tmp_path / "ray" / "checkpoints" / "step-00000004" / "COMMITTED").exists()
    assert (tmp_path / "ray" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
