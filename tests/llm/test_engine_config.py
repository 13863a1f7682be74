import numpy as np
import pytest
import torch

from llm.config import ModelConfig, TrainConfig
from llm.engine import deepspeed_config, param_groups, resolve_precision, token_tensor
from llm.layout import ParallelLayout
from llm.model import Transformer

CPU = torch.device("cpu")


def test_deepspeed_config_keeps_the_global_batch_through_accumulation():
    cfg = TrainConfig(micro_batch=2, global_batch=16, zero_stage=3, grad_clip=0.5)
    ds = deepspeed_config(cfg, ParallelLayout.for_run(cfg, 2, "fp32"), precision="fp32", device=CPU)
    assert ds["train_batch_size"] == 16
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 2 == 16
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["overlap_comm"] is False  # no CUDA streams on CPU
    assert ds["bf16"]["enabled"] is False


def test_the_engine_runs_the_zero_stage_of_its_layout():
    cfg = TrainConfig(micro_batch=2, global_batch=16, zero_stage=2)
    one_rank = ParallelLayout.for_run(cfg, 1, "fp32")
    assert deepspeed_config(cfg, one_rank, precision="fp32", device=CPU)["zero_optimization"] == {"stage": 0}


def test_pipeline_accumulates_over_data_parallel_ranks_only():
    cfg = TrainConfig(micro_batch=2, global_batch=16, zero_stage=1, pipeline_stages=2)
    layout = ParallelLayout.for_run(cfg, 4, "bf16")
    assert deepspeed_config(cfg, layout, precision="bf16", device=CPU)["gradient_accumulation_steps"] == 4


def test_auto_precision_is_fp32_on_cpu_and_explicit_choices_win():
    assert resolve_precision(TrainConfig(), CPU) == "fp32"
    assert resolve_precision(TrainConfig(precision="bf16"), CPU) == "bf16"
    assert resolve_precision(TrainConfig(), torch.device("cuda", 0)) == "bf16"


def test_weight_decay_applies_to_matrices_not_norm_gains():
    model = Transformer(ModelConfig(dim=32, layers=2, heads=4, multiple_of=16), 50)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_unsigned_token_batches_widen_to_int64_with_every_value_kept(dtype):
    top = np.iinfo(dtype).max
    batch = np.array([[0, 1, 40_000, top], [top - 1, 7, 2, 3]], dtype=dtype)
    tokens = token_tensor(batch, torch.device("cpu"))
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == batch.astype(np.int64).tolist()
