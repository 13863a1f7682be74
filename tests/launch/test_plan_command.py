import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.config import ConfigError, load_config
from launch.planning import plan_for

REPO = Path(__file__).resolve().parents[2]


def test_plan_of_the_7b_config_on_h100s_reports_about_seven_billion_parameters():
    cfg = load_config(str(REPO / "configs" / "7b.yaml"))
    p = plan_for(cfg, gpus=64, gpu="h100", mfu=0.4)
    assert 6.0e9 < p["params"] < 7.5e9
    assert p["model_states_gb_by_stage"][3] < p["model_states_gb_by_stage"][2] < p["model_states_gb_by_stage"][0]


def test_plan_rejects_an_unknown_gpu_in_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"inputs": ["x"]}}))
    with pytest.raises(ConfigError, match="gpu='v100'"):
        plan_for(load_config(str(path)), gpus=2, gpu="v100", mfu=0.4)


def test_plan_for_a_gpu_count_the_layout_cannot_use_is_one_line(tmp_path):
    cfg = load_config(str(REPO / "configs" / "7b.yaml"), ["train.zero_stage=1", "train.pipeline_stages=4"])
    with pytest.raises(ConfigError, match="world size 6 is not a multiple of train.pipeline_stages=4"):
        plan_for(cfg, gpus=6, gpu="h100", mfu=0.4)


def test_kiln_plan_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "plan", str(REPO / "configs" / "smoke.yaml"), "--gpus", "2", "--gpu", "h200"],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "model states per GPU, ZeRO-2" in proc.stdout and "time to train.steps=600" in proc.stdout
