"""`kiln eval --follow`: each checkpoint is evaluated as it is committed, and the watch ends with the run."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ops import storage
from ops.records import RunRecords

pytestmark = pytest.mark.slow


def commit(source_run: str, run: str, step: int) -> None:
    """Copy a committed checkpoint in commit order: its files, then COMMITTED, then latest."""
    name = f"step-{step:08d}"
    src, dst = os.path.join(source_run, "checkpoints", name), os.path.join(run, "checkpoints", name)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("COMMITTED"))
    shutil.copy(os.path.join(src, "COMMITTED"), os.path.join(dst, "COMMITTED"))
    storage.write_text(os.path.join(run, "checkpoints", "latest"), name + "\n")


def wait_for(path: str, proc: subprocess.Popen, limit_s: float = 600) -> None:
    """Wait until ``path`` exists; fail if the watcher exits first (the limit only guards against a hang)."""
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path):
        assert proc.poll() is None, f"the watcher exited ({proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {limit_s}s"
        time.sleep(0.5)


def test_follow_evaluates_each_new_checkpoint_and_stops_when_the_run_finishes(trained_run, config_writer, tmp_path):
    run = str(tmp_path / "run")
    config = config_writer(
        tmp_path, trained_run.data_url, eval={"follow_interval_s": 0.5, "slice_size": 64, "max_windows_per_shard": 64}
    )
    records = RunRecords(run)
    records.event("start", world_size=2)
    commit(trained_run.run_url, run, 3)
    ray_tmp = tempfile.mkdtemp(prefix="kray-")  # short: Ray's socket paths must fit in 107 characters
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "eval", str(config), "--follow"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(os.path.join(run, "eval", "step-00000003.json"), proc)
        assert proc.poll() is None  # still watching: the run has not finished
        commit(trained_run.run_url, run, 6)
        wait_for(os.path.join(run, "eval", "step-00000006.json"), proc)
        assert proc.poll() is None
        records.event("finish", step=6)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # a failed test: interrupt it, so that it shuts its own Ray down
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert "following" in err and "step 3" in out and "step 6" in out
    assert storage.read_json(os.path.join(run, "eval", "step-00000006.json"))["tasks"]["heldout"]["examples"] == 64
