"""`kiln plan` with the object-store traffic of the data, from a config."""

import os
import subprocess
import sys
from pathlib import Path

from data_shards.traffic import PREFIX_GETS_PER_S
from launch.config import load_config
from launch.plan_command import config_shuffle, plan_for, traffic_for

REPO = Path(__file__).resolve().parents[2]


def test_the_1b_config_on_1024_gpus_streams_in_block_mode_within_one_prefix():
    cfg = load_config(str(REPO / "configs" / "1b.yaml"), ["data.output=s3://bucket/data", "train.global_batch=4096"])
    p = plan_for(cfg, gpus=1024, gpu="h100", mfu=0.4)
    plans = traffic_for(cfg, gpus=1024, gpus_per_node=8, tokens_per_s_per_gpu=p["tokens_per_s"] / 1024)
    assert plans["block"].nodes == 128 and plans["block"].gpus_per_node == 8
    assert plans["block"].gets_per_s < PREFIX_GETS_PER_S < plans["global"].gets_per_s
    assert config_shuffle(cfg) == "block"
    assert config_shuffle(load_config(str(REPO / "configs" / "1b.yaml"))) == "global"


def test_kiln_plan_prints_the_traffic_of_both_shuffle_modes():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "plan",
            str(REPO / "configs" / "1b.yaml"),
            "data.shuffle=block",
            "train.global_batch=4096",
            "--gpus",
            "1024",
            "--gpu",
            "h100",
            "--gpus-per-node",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "object-store traffic · 128 nodes × 8 GPUs" in proc.stdout
    assert "block ◀" in proc.stdout and "(within 5,500)" in proc.stdout and "(OVER 5,500)" in proc.stdout
