import pytest
from deepspeed.runtime.zero.stage3 import (
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_cold,
    model_to_params,
)
from deepspeed.runtime.zero.stage_1_and_2 import (
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_cold,
)

from llm.config import ModelConfig
from llm.layout import ParallelLayout
from llm.model import Transformer
from ops.plan import GIB, model_state_bytes, plan

TINY = {"dim": 64, "layers": 3, "heads": 4, "kv_heads": 2, "multiple_of": 32}


def gpus(n: int, zero_stage: int, pipeline_stages: int = 1) -> ParallelLayout:
    return ParallelLayout(
        world_size=n, data_parallel=n // pipeline_stages, pipeline_stages=pipeline_stages, zero_stage=zero_stage
    )


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_counts_match_deepspeeds_view_of_the_real_model(tie):
    model = Transformer(ModelConfig(**TINY, tie_embeddings=tie), 300)
    total, largest = model_to_params(model)
    counts = ModelConfig(**TINY, tie_embeddings=tie).parameter_counts(300)
    assert counts["total"] == total
    assert counts["largest_module"] == largest


@pytest.mark.parametrize("gpus", [1, 8, 64])
def test_model_state_bytes_agree_with_deepspeed_estimators(gpus):
    model = Transformer(ModelConfig(**TINY), 300)
    total, largest = model_to_params(model)
    _, zero2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=gpus, cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=gpus, cpu_offload=False)
    assert model_state_bytes(total, largest, 2, gpus) == zero2
    assert model_state_bytes(total, largest, 3, gpus) == zero3


def test_7b_plan_matches_deepspeed_printed_estimates(capsys):
    dims = ModelConfig(dim=4096, layers=32, heads=32, kv_heads=32, ffn_hidden=11008)
    result = plan(dims, 32000, seq_len=4096, micro_batch=1, global_batch=512, steps=1000, layout=gpus(8, 3), gpu="h100")
    assert 6.7e9 < result["params"] < 6.8e9  # Llama-2 7B
    estimate_zero2_model_states_mem_needs_all_cold(result["params"], num_gpus_per_node=8)
    estimate_zero3_model_states_mem_needs_all_cold(result["params"], result["params_largest_module"], num_gpus_per_node=8)
    printed = capsys.readouterr().out
    assert f"{result['model_states_gb_by_stage'][2]:.2f}GB" in printed
    assert f"{result['model_states_gb_by_stage'][3]:.2f}GB" in printed


def test_stages_shrink_per_gpu_memory_and_time_follows_mfu():
    dims = ModelConfig(dim=2048, layers=16, heads=16)
    a = plan(dims, 32000, 2048, 4, 256, 100, layout=gpus(8, 1), gpu="h200", mfu=0.4)
    b = plan(dims, 32000, 2048, 4, 256, 100, layout=gpus(8, 1), gpu="h200", mfu=0.2)
    by_stage = a["model_states_gb_by_stage"]
    assert by_stage[0] > by_stage[1] > by_stage[2] > by_stage[3]
    assert b["time_to_steps_s"] == pytest.approx(2 * a["time_to_steps_s"])
    assert a["tokens_per_s"] == pytest.approx(8 * 989e12 * 0.4 / a["flops_per_token"])
    assert a["total_gb"] == pytest.approx(a["model_states_gb"] + a["activations_gb"])
    checkpointed = plan(dims, 32000, 2048, 4, 256, 100, layout=gpus(8, 1), gpu="h200", activation_checkpointing=True)
    assert checkpointed["activations_gb"] < a["activations_gb"]


def test_unknown_gpu_is_one_clear_line():
    with pytest.raises(ValueError, match="gpu='v100' is not known; valid: a100, h100, h200"):
        plan(ModelConfig(**TINY), 300, 64, 1, 8, 10, layout=gpus(1, 2), gpu="v100")


def test_pipeline_stages_split_the_parameters_and_zero_partitions_over_data_parallel_ranks_only():
    dims = ModelConfig(dim=2048, layers=16, heads=16)
    flat = plan(dims, 32000, 2048, 4, 256, 100, layout=gpus(4, 1), gpu="h100")
    piped = plan(dims, 32000, 2048, 4, 256, 100, layout=gpus(8, 1, pipeline_stages=2), gpu="h100")
    assert piped["data_parallel"] == 4 and piped["pipeline_stages"] == 2
    assert piped["model_states_gb_by_stage"][0] == pytest.approx(flat["model_states_gb_by_stage"][0] / 2, rel=1e-6)
    assert piped["model_states_gb_by_stage"][1] == pytest.approx(flat["model_states_gb_by_stage"][1] / 2, rel=1e-6)


def test_gib_is_binary():
    assert GIB == 1024**3
