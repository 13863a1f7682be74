"""The parallel layout: computed once from the train section and the world size, validated in one line."""

from pathlib import Path

import pytest

from launch.config import ConfigError, load_config
from llm.config import ModelConfig, TrainConfig
from llm.layout import LayoutError, ParallelLayout, check_split

REPO = Path(__file__).resolve().parents[2]


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
    with pytest.raises(ValueError, match="data_parallel=2 x tensor_parallel=2 x sequence_parallel=2 x pipeline_stages=1 = 8"):
        ParallelLayout(world_size=4, data_parallel=2, tensor_parallel=2, sequence_parallel=2, zero_stage=1)
    layout = ParallelLayout(world_size=4, data_parallel=2, pipeline_stages=2, zero_stage=1)
    assert ParallelLayout.model_validate_json(layout.model_dump_json()) == layout


def test_the_world_is_data_times_tensor_times_sequence_times_pipeline():
    cfg = TrainConfig(micro_batch=1, global_batch=8, zero_stage=1, tensor_parallel=2, sequence_parallel=2)
    layout = ParallelLayout.for_run(cfg, 8, "bf16")
    assert (layout.data_parallel, layout.tensor_parallel, layout.sequence_parallel) == (2, 2, 2)
    assert layout.gradient_ranks == 4
    assert layout.grad_accum_steps(cfg) == 4  # the global batch is split over data-parallel ranks only
    assert layout.describe() == "8 ranks (2 data-parallel x 2 tensor-parallel x 2 sequence-parallel, ZeRO-1)"


def test_the_ranks_of_a_sequence_group_are_neighbours_reading_the_same_samples():
    layout = ParallelLayout(world_size=4, data_parallel=2, sequence_parallel=2, zero_stage=3)
    assert layout.sequence_groups() == [[0, 1], [2, 3]]
    assert [layout.data_rank_of(r) for r in range(4)] == [0, 0, 1, 1]
    assert [layout.sequence_rank_of(r) for r in range(4)] == [0, 1, 0, 1]
    assert [layout.gradient_rank_of(r) for r in range(4)] == [0, 1, 2, 3]  # every rank holds its own ZeRO partition
    mixed = ParallelLayout(world_size=8, data_parallel=2, tensor_parallel=2, sequence_parallel=2, zero_stage=1)
    assert [(mixed.data_rank_of(r), mixed.tensor_rank_of(r), mixed.sequence_rank_of(r)) for r in range(4)] == [
        (0, 0, 0),
        (0, 0, 1),
        (0, 1, 0),
        (0, 1, 1),
    ]


def test_a_sequence_split_of_one_data_parallel_rank_keeps_the_configured_zero_stage():
    cfg = TrainConfig(micro_batch=2, global_batch=8, zero_stage=3, sequence_parallel=2)
    assert ParallelLayout.for_run(cfg, 2, "fp32").zero_stage == 3  # ZeRO partitions over both ranks of the split


@pytest.mark.parametrize(
    ("train", "world", "message"),
    [
        (
            {"sequence_parallel": 2, "tensor_parallel": 2},
            6,
            "world size 6 is not a multiple of train.tensor_parallel=2 x train.sequence_parallel=2 = 4",
        ),
        ({"sequence_parallel": 4}, 6, "world size 6 is not a multiple of train.sequence_parallel=4"),
    ],
)
def test_a_split_that_does_not_divide_the_world_is_one_line(train, world, message):
    with pytest.raises(LayoutError) as err:
        ParallelLayout.for_run(TrainConfig(micro_batch=1, global_batch=8, zero_stage=1, **train), world, "fp32")
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        (
            {"heads": 6, "kv_heads": 2, "dim": 48},
            {"sequence_parallel": 4},
            "train.sequence_parallel=4 must divide model.heads=6 and model.kv_heads=2",
        ),
        ({"heads": 4, "kv_heads": 1}, {"sequence_parallel": 2}, "train.sequence_parallel=2 must divide model.kv_heads=1"),
        ({"seq_len": 30}, {"sequence_parallel": 4}, "train.sequence_parallel=4 must divide model.seq_len=30"),
        ({"heads": 4, "ffn_hidden": 90}, {"tensor_parallel": 4}, "train.tensor_parallel=4 must divide MLP width=90"),
        (
            {"heads": 6, "kv_heads": 3, "dim": 48, "ffn_hidden": 96},
            {"tensor_parallel": 2},
            "train.tensor_parallel=2 must divide model.kv_heads=3",
        ),
    ],
)
def test_a_model_that_does_not_split_is_one_line(model, train, message):
    with pytest.raises(LayoutError) as err:
        check_split(ModelConfig(**model), TrainConfig(**train))
    assert str(err.value) == message


def write_config(tmp_path) -> str:
    path = tmp_path / "kiln.yaml"
    path.write_text((REPO / "configs/smoke.yaml").read_text())
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.sequence_parallel=3"],
            "train.sequence_parallel=3 must divide model.kv_heads=2",
        ),
        (
            ["train.tensor_parallel=2", "train.zero_stage=3"],
            "train.tensor_parallel=2 cannot be combined with train.zero_stage=3: "
            "tensor parallelism runs with ZeRO stage 0, 1 or 2",
        ),
        (
            ["train.sequence_parallel=2", "train.pipeline_stages=2", "train.zero_stage=1"],
            "train.sequence_parallel=2 cannot be combined with train.pipeline_stages=2",
        ),
    ],
)
def test_a_bad_split_in_a_config_file_is_one_line_before_any_rank_starts(tmp_path, overrides, message):
    path = write_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_tensor_split_config_makes_a_train_job(tmp_path):
    job = load_config(write_config(tmp_path), ["train.tensor_parallel=2"]).train_job()
    assert job.train.tensor_parallel == 2


def test_tensor_and_sequence_splits_together_must_leave_each_rank_whole_heads():
    with pytest.raises(LayoutError) as err:
        check_split(ModelConfig(heads=4, kv_heads=2, seq_len=32), TrainConfig(tensor_parallel=2, sequence_parallel=2))
    assert str(err.value) == (
        "train.tensor_parallel=2 x train.sequence_parallel=2 = 4 must divide model.kv_heads=2: "
        "each rank of both splits needs whole heads"
    )


def test_tensor_groups_hold_one_layer_and_gradient_groups_one_slice():
    layout = ParallelLayout(world_size=8, data_parallel=2, tensor_parallel=2, sequence_parallel=2, zero_stage=1)
    assert layout.tensor_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert layout.gradient_groups() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    # a rank's index in its gradient group is the ZeRO partition it holds
    assert [layout.gradient_groups()[layout.tensor_rank_of(r)].index(r) for r in range(8)] == [
        layout.gradient_rank_of(r) for r in range(8)
    ]
