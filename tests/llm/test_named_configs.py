"""The named model-size configs load through the config loader and fit one 8-GPU node."""

from pathlib import Path

import pytest

from launch.config import load_config
from llm.layout import ParallelLayout
from ops.plan import plan

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SIZES = {"125m": (0.10e9, 0.16e9), "350m": (0.30e9, 0.40e9), "1b": (0.9e9, 1.3e9), "7b": (6.5e9, 7.0e9)}


@pytest.mark.parametrize("name", list(SIZES))
def test_named_config_has_the_size_it_is_named_for_and_fits_eight_h100s(name):
    cfg = load_config(str(CONFIGS / f"{name}.yaml"))
    layout = ParallelLayout.for_run(cfg.train, 8, "bf16")
    result = plan(
        cfg.model,
        cfg.data.vocab_size,
        cfg.model.seq_len,
        cfg.train.micro_batch,
        cfg.train.global_batch,
        cfg.train.steps,
        layout=layout,
        gpu="h100",
        activation_checkpointing=cfg.model.activation_checkpointing,
    )
    low, high = SIZES[name]
    assert low <= result["params"] <= high
    assert result["fits"], f"{name}: {result['total_gb']:.1f} GiB per GPU"
    assert layout.grad_accum_steps(cfg.train) >= 1
