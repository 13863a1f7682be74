"""The DeepSpeed adapter on its own: which files each rank reads, and loads that never run code."""

import io
import pickle

import pytest
import torch

from llm.checkpoint_record import FileEntry
from llm.deepspeed_files import (
    SAFE_GLOBALS,
    UnsafeCheckpointError,
    deepspeed_loads_weights_only,
    load_weights_only,
    rank_files,
)
from llm.layout import ParallelLayout

# File lists of real 2-rank DeepSpeed 0.19 checkpoints, with the rank that wrote each file.
SAVED = {
    "zero2": (
        ParallelLayout(world_size=2, data_parallel=2, zero_stage=2),
        {
            "mp_rank_00_model_states.pt": 0,
            "zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
            "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        },
    ),
    "zero3": (
        ParallelLayout(world_size=2, data_parallel=2, zero_stage=3),
        {
            "zero_pp_rank_0_mp_rank_00_model_states.pt": 0,
            "zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
            "zero_pp_rank_1_mp_rank_00_model_states.pt": 1,
            "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        },
    ),
    "sequence2_zero3": (  # the ranks of a sequence split hold ZeRO partitions of their own
        ParallelLayout(world_size=2, data_parallel=1, sequence_parallel=2, zero_stage=3),
        {
            "zero_pp_rank_0_mp_rank_00_model_states.pt": 0,
            "zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
            "zero_pp_rank_1_mp_rank_00_model_states.pt": 1,
            "zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        },
    ),
    "bf16_zero2": (
        ParallelLayout(world_size=2, data_parallel=2, zero_stage=2),
        {
            "mp_rank_00_model_states.pt": 0,
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
        },
    ),
    "pipeline2": (
        ParallelLayout(world_size=2, data_parallel=1, pipeline_stages=2, zero_stage=1),
        {
            "layer_00-model_states.pt": 0,
            "layer_01-model_states.pt": 0,
            "layer_02-model_states.pt": 1,
            "layer_03-model_states.pt": 1,
            "mp_rank_00_model_states.pt": 0,
            "mp_rank_01_model_states.pt": 1,
            "zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
            "zero_pp_rank_0_mp_rank_01_optim_states.pt": 1,
        },
    ),
}
EXPECTED = {
    "zero2": [
        {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"},
        {"mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"},
    ],
    "zero3": [
        {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"},
        {"zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"},
    ],
    "sequence2_zero3": [
        {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"},
        {"zero_pp_rank_1_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"},
    ],
    "bf16_zero2": [
        {"mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"},
        {"mp_rank_00_model_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"},
    ],
    "pipeline2": [
        {
            "layer_00-model_states.pt",
            "layer_01-model_states.pt",
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        },
        {
            "layer_02-model_states.pt",
            "layer_03-model_states.pt",
            "mp_rank_01_model_states.pt",
            "mp_rank_00_model_states.pt",  # DeepSpeed's loader opens the first stage's file on every rank
            "zero_pp_rank_0_mp_rank_01_optim_states.pt",
        },
    ],
}


@pytest.mark.parametrize("layout_name", list(SAVED))
def test_each_rank_reads_its_stage_and_its_own_partition_never_another_ranks(layout_name):
    layout, written = SAVED[layout_name]
    files = [FileEntry(path=p, bytes=1, sha256="0" * 64, rank=r) for p, r in written.items()]
    for rank in range(layout.world_size):
        assert {e.path for e in rank_files(files, layout, rank)} == EXPECTED[layout_name][rank]


def test_a_file_of_an_unknown_kind_is_read_rather_than_missed():
    layout = ParallelLayout(world_size=2, data_parallel=2, zero_stage=2)
    files = [FileEntry(path="extra_state.pt", bytes=1, sha256="0" * 64, rank=1)]
    assert rank_files(files, layout, 0) == files


class Payload:
    """What an attacker plants: unpickling it calls a function of their choice."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def torch_file(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_a_pickled_call_is_refused_with_one_line_naming_it_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "mp_rank_00_model_states.pt"
    path.write_bytes(torch_file({"module": {}, "trap": Payload(str(marker))}).getvalue())
    with pytest.raises(UnsafeCheckpointError) as info:
        load_weights_only(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "refusing" in message and "open" in message
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args  # it crosses process boundaries


def test_deepspeeds_own_classes_are_allowed_and_tensors_come_back():
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {
        "loss_scaler": LossScaler(1.0),
        "zero_stage": ZeroStageEnum.gradients,
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        "w": torch.arange(4.0),
    }
    loaded = load_weights_only(torch_file(state))
    assert loaded["zero_stage"] == ZeroStageEnum.gradients
    assert loaded["param_slice_mappings"][0]["w"].numel == 4
    assert torch.equal(loaded["w"], torch.arange(4.0))
    assert len(SAFE_GLOBALS) == 3


def test_direct_torch_loads_inside_deepspeed_calls_are_weights_only_and_restored_after(tmp_path):
    marker = tmp_path / "marker"
    trap = torch_file(Payload(str(marker)))
    original = torch.load
    with deepspeed_loads_weights_only():
        with pytest.raises(UnsafeCheckpointError):
            torch.load(trap, weights_only=False)  # what DeepSpeed's universal loader asks for
    assert torch.load is original and not marker.exists()
