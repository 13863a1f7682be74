import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.config import ConfigError, load_config
from launch.plan_command import plan_for

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
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "plan", str(REPO / "configs" / "smoke.yaml"), "--gpus", "2", "--gpu", "h200"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "model states per GPU, ZeRO-2" in proc.stdout and "time to train.steps=600" in proc.stdout


def plan_rows(stdout: str) -> dict[str, str]:
    """quantity → value of the plan table `kiln plan` prints."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0] and cells[1]:
            rows[cells[0]] = cells[1]
    return rows


def test_kiln_plan_prints_the_numbers_of_the_7b_config_worked_out_independently():
    """Llama-2 7B's shape (configs/7b.yaml) on 64 H100s at 40% MFU, by hand: Meta's published parameter count;
    6 FLOPs per matmul weight plus 12·layers·dim·seq_len for attention; DeepSpeed's 2 + 18 bytes per parameter
    under each ZeRO stage; time = tokens / (GPUs × peak × MFU / FLOPs per token)."""
    cfg = yaml.safe_load((REPO / "configs" / "7b.yaml").read_text())
    assert (
        cfg["model"]["dim"],
        cfg["model"]["layers"],
        cfg["model"]["ffn_hidden"],
        cfg["model"]["seq_len"],
        cfg["data"]["vocab_size"],
        cfg["train"]["global_batch"],
        cfg["train"]["steps"],
    ) == (4096, 32, 11008, 4096, 32000, 1024, 100_000)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "plan", str(REPO / "configs" / "7b.yaml"), "--gpus", "64", "--gpu", "h100"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    rows = plan_rows(proc.stdout)

    params = 6_738_415_616  # Llama-2-7b
    assert rows["parameters"] == f"{params / 1e6:,.1f} M" == "6,738.4 M"
    matmul = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096  # blocks' projections and the output head
    flops = 6 * matmul + 12 * 32 * 4096 * 4096
    assert rows["training FLOPs per token"] == f"{flops / 1e9:.2f} G" == "46.08 G"

    gib = 2**30
    largest = 32000 * 4096  # the embedding: ZeRO-3 gathers one module at a time, in bf16 and its fp32 gradient
    states = {
        0: 20 * params,
        1: 4 * params + 16 * params / 64,
        2: 2 * params + 18 * params / 64,
        3: 4 * largest + 18 * params / 64,
    }
    for stage, nbytes in states.items():
        marker = " ◀" if stage == 3 else ""
        assert rows[f"model states per GPU, ZeRO-{stage}"] == f"{nbytes / gib:.2f} GiB{marker}"
    assert rows["model states per GPU, ZeRO-3"] == "2.25 GiB ◀"
    # Activation checkpointing keeps each block's bf16 input, one block's tensors while it is recomputed
    # (norms' inputs and outputs, q, k, v, attention output: 6·dim + 2·kv_dim; SwiGLU: 4·hidden) and the
    # logits in bf16 and fp32, for one micro-batch of 4096 tokens.
    tokens = 1 * 4096
    activations = 32 * 2 * tokens * 4096 + 2 * tokens * (6 * 4096 + 2 * 4096 + 4 * 11008) + tokens * 32000 * (2 + 4)
    assert rows["activations per GPU (micro-batch 1)"] == f"{activations / gib:.2f} GiB" == "2.32 GiB"
    assert rows["total per GPU"] == f"{(states[3] + activations) / gib:.2f} of 80 GiB (fits)"

    tokens_per_s = 64 * 989e12 * 0.4 / flops
    step_tokens = 1024 * 4096
    assert rows["tokens/s at 40% MFU"] == f"{tokens_per_s:,.0f}" == "549,386"
    assert rows["step time"] == f"{step_tokens / tokens_per_s:.2f} s" == "7.63 s"
    seconds = 100_000 * step_tokens / tokens_per_s
    assert seconds // 86400 == 8 and seconds % 86400 // 3600 == 20 and seconds % 3600 // 60 == 4
    assert rows["time to train.steps=100,000 (419.43 B tokens)"] == "8d 20h 4m"


def test_plan_of_the_7b_config_at_32k_tokens_on_8_gpus_under_sequence_and_tensor_splits_worked_out_by_hand():
    """configs/7b.yaml (activation checkpointing, micro-batch 1) at seq_len 32,768 on 8 H100s.

    SP=8 (ZeRO-3): every rank holds whole weights, ZeRO partitions them over all 8 ranks, and each
    rank keeps the activations of 32,768 / 8 = 4,096 tokens.  TP=8 (ZeRO-1, one data-parallel rank):
    every matrix is split 8 ways and the 65 norm gains are whole on each rank; nothing is left for ZeRO
    to partition; the residual stream (each block's checkpointed input, the norms' inputs and outputs)
    is whole, the projections' outputs and the logits are an eighth.
    """
    gib = 2**30
    params = 6_738_415_616
    largest = 32000 * 4096  # the embedding

    sp = plan_for(
        load_config(str(REPO / "configs/7b.yaml"), ["model.seq_len=32768", "train.sequence_parallel=8"]), 8, "h100", 0.4
    )
    assert (sp["data_parallel"], sp["sequence_parallel"], sp["zero_stage"]) == (1, 8, 3)
    assert sp["model_states_gb"] * gib == 4 * largest + 18 * params / 8 == 15_685_723_136
    tokens = 4096
    blocks_inputs = 32 * 2 * tokens * 4096  # 1 GiB
    one_block = 2 * tokens * (6 * 4096 + 2 * 4096 + 4 * 11008)
    logits = tokens * 32000 * (2 + 4)
    assert blocks_inputs + one_block + logits == 2_489_319_424
    assert sp["activations_gb"] * gib == 2_489_319_424

    tp = plan_for(
        load_config(str(REPO / "configs/7b.yaml"), ["model.seq_len=32768", "train.tensor_parallel=8", "train.zero_stage=1"]),
        8,
        "h100",
        0.4,
    )
    assert (tp["data_parallel"], tp["tensor_parallel"], tp["zero_stage"]) == (1, 8, 1)
    norms = (2 * 32 + 1) * 4096
    per_rank = (params - norms) // 8 + norms
    assert per_rank == 842_534_912
    assert tp["model_states_gb"] * gib == 20 * per_rank == 16_850_698_240  # ZeRO-1 over one gradient rank
    tokens = 32768
    blocks_inputs = 32 * 2 * tokens * 4096  # 8 GiB: the residual stream is whole on every tensor-parallel rank
    one_block = 2 * tokens * (4 * 4096 + (2 * 4096 + 2 * 4096 + 4 * 11008) // 8)
    logits = tokens * (32000 // 8) * (2 + 4)
    assert blocks_inputs + one_block + logits == 10_945_036_288
    assert tp["activations_gb"] * gib == 10_945_036_288
