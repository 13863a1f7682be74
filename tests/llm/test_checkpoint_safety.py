"""Checkpoint bytes are never code: a planted pickle, its checksum fixed up in COMMITTED (anyone who
can write the bucket can do both), is refused by every command that reads checkpoints, and the
code it carries never runs."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
import yaml

from launch.config import load_config

pytestmark = pytest.mark.slow

PLANTED = "mp_rank_00_model_states.pt"


class Payload:
    """Unpickled with arbitrary globals, this creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def planted(ranks, token_data, tmp_path_factory):
    """A trained 2-rank run whose latest checkpoint carries the payload, and its config file."""
    tmp = tmp_path_factory.mktemp("planted")
    job = ranks.job(tmp / "run", token_data, steps=2, checkpoint_every=2)
    config = tmp / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "planted", "dir": str(tmp / "run"), "seed": job.seed},
                "data": {"inputs": ["unused.jsonl"], "output": token_data},
                "model": job.model.model_dump(mode="json"),
                "train": {**job.train.model_dump(mode="json"), "steps": 4},
                "eval": {"batch_size": 8, "max_windows_per_shard": 4},
                "cluster": {"num_cpus": 2},
            }
        )
    )
    # trained as that config trains, so that `kiln train` with it resumes this run rather than refusing it
    job = job.model_copy(update={"config_hash": load_config(str(config)).training_hash()})
    proc = ranks.torchrun(job, tmp)
    assert proc.returncode == 0, ranks.errors(proc)
    step = tmp / "run" / "checkpoints" / "step-00000002"
    marker = tmp / "marker"
    torch.save({"module": Payload(str(marker))}, step / PLANTED)
    data = (step / PLANTED).read_bytes()
    record = json.loads((step / "COMMITTED").read_text())
    for entry in record["files"]:
        if entry["path"] == PLANTED:
            entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (step / "COMMITTED").write_text(json.dumps(record))
    return tmp, config, step / PLANTED, marker


def kiln(ranks, *args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=ranks.env(), capture_output=True, text=True, timeout=900
    )


def refusal_lines(stderr: str, path) -> list[str]:
    return [line for line in stderr.splitlines() if f"{path}: refusing to load it" in line]


def test_resuming_training_refuses_the_planted_pickle_and_never_runs_it(ranks, planted):
    tmp, config, path, marker = planted
    proc = kiln(ranks, "train", str(config), cwd=tmp)
    assert proc.returncode != 0
    lines = refusal_lines(proc.stderr, path)
    assert lines and all(line.startswith("rank ") for line in lines), proc.stderr[-3000:]
    assert "Unsupported global: GLOBAL io.open" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "{config}"],
        ["export", "hf", "{run}", "{tmp}/hf-out"],
        ["generate", "{run}", "import os", "--max-tokens", "4"],
    ],
)
def test_eval_export_and_generate_refuse_it_in_one_line_and_never_run_it(command, ranks, planted):
    tmp, config, path, marker = planted
    args = [a.format(config=config, run=tmp / "run", tmp=tmp) for a in command]
    proc = kiln(ranks, *args, cwd=tmp)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kiln: error:")]
    assert errors == refusal_lines(proc.stderr, path) and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_ckpt_verify_reports_it(ranks, planted):
    tmp, _, path, marker = planted
    proc = kiln(ranks, "ckpt", "verify", str(tmp / "run"), cwd=tmp)
    assert proc.returncode == 1
    assert f"{path}: refusing to load it" in proc.stdout
    assert not marker.exists()
