"""The parallel layout: computed once from the train section and the world size, validated in one line."""

import pytest

from llm.config import TrainConfig
from llm.layout import LayoutError, ParallelLayout


def test_data_parallel_ranks_are_the_world_divided_by_pipeline_stages():
    layout = ParallelLayout.for_run(TrainConfig(micro_batch=2, global_batch=16, zero_stage=1, pipeline_stages=2), 4, "bf16")
    assert (layout.world_size, layout.data_parallel, layout.pipeline_stages, layout.zero_stage) == (4, 2, 2, 1)
    assert layout.pipelined


def test_ranks_are_placed_as_deepspeeds_pipe_data_topology_places_them():
    layout = ParallelLayout(world_size=6, data_parallel=3, pipeline_stages=2, zero_stage=1)
    assert [(layout.stage_of(r), layout.data_rank_of(r)) for r in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_one_fp32_data_parallel_rank_runs_zero_stage_0_and_everything_else_keeps_its_stage():
    cfg = TrainConfig(micro_batch=2, global_batch=16, zero_stage=2)
    assert ParallelLayout.for_run(cfg, 1, "fp32").zero_stage == 0
    assert ParallelLayout.for_run(cfg, 2, "fp32").zero_stage == 2
    assert ParallelLayout.for_run(cfg, 1, "bf16").zero_stage == 2
    assert ParallelLayout.for_run(TrainConfig(zero_stage=1, pipeline_stages=2), 2, "fp32").zero_stage == 1


def test_grad_accumulation_keeps_the_global_batch():
    cfg = TrainConfig(micro_batch=2, global_batch=16)
    assert ParallelLayout.for_run(cfg, 2, "fp32").grad_accum_steps(cfg) == 4
    assert ParallelLayout.for_run(cfg, 1, "fp32").grad_accum_steps(cfg) == 8
    piped = TrainConfig(micro_batch=2, global_batch=16, zero_stage=1, pipeline_stages=2)
    assert ParallelLayout.for_run(piped, 2, "fp32").grad_accum_steps(piped) == 8


def test_a_layout_that_does_not_fit_is_one_line_naming_the_keys():
    with pytest.raises(LayoutError, match="train.global_batch=12 is not divisible by train.micro_batch=4 x 4 data-parallel"):
        ParallelLayout.for_run(TrainConfig(micro_batch=4, global_batch=12), 4, "fp32")
    with pytest.raises(LayoutError, match="world size 3 is not a multiple of train.pipeline_stages=2"):
        ParallelLayout.for_run(TrainConfig(zero_stage=1, pipeline_stages=2), 3, "fp32")


def test_a_layout_read_back_from_a_record_is_checked_too():
    with pytest.raises(ValueError, match="not the world size 4"):
        ParallelLayout(world_size=4, data_parallel=3, zero_stage=1)
    with pytest.raises(ValueError, match="tensor_parallel"):
        ParallelLayout(world_size=4, data_parallel=2, tensor_parallel=2, zero_stage=1)
    layout = ParallelLayout(world_size=4, data_parallel=2, pipeline_stages=2, zero_stage=1)
    assert ParallelLayout.model_validate_json(layout.model_dump_json()) == layout
