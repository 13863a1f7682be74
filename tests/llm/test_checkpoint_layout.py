"""Checkpoint discovery, retention, records and layout routes over real folders (no DeepSpeed ranks)."""

import pytest
import torch

from llm import checkpoint
from llm.checkpoint import CheckpointError
from llm.checkpoint_record import CheckpointRecord, DataPosition, FileEntry, RngState, distinct_states
from llm.config import ModelConfig
from llm.deepspeed_files import reshape_route
from llm.layout import ParallelLayout
from ops import checkpoints, storage


def make_step(run, step, committed=True):
    url = checkpoint.step_url(str(run), step)
    storage.write_bytes(storage.join(url, "mp_rank_00_model_states.pt"), b"x")
    if committed:
        storage.write_json(checkpoints.commit_url(str(run), step), {"step": step})


def point_latest(run, text):
    storage.write_text(checkpoints.latest_url(str(run)), text)


def test_step_names_round_trip():
    assert checkpoint.step_name(120) == "step-00000120"
    assert checkpoint.parse_step("step-00000120") == 120
    assert checkpoint.parse_step("latest") is None
    assert checkpoint.parse_step("zero_to_fp32.py") is None


def test_no_checkpoints_means_no_resume(tmp_path):
    assert checkpoint.latest_committed_step(str(tmp_path)) is None


def test_latest_pointer_wins_when_committed(tmp_path):
    make_step(tmp_path, 3)
    make_step(tmp_path, 6)
    point_latest(tmp_path, "step-00000003\n")
    assert checkpoint.latest_committed_step(str(tmp_path)) == 3


def test_uncommitted_latest_falls_back_to_previous_committed_with_a_warning(tmp_path):
    make_step(tmp_path, 3)
    make_step(tmp_path, 6, committed=False)
    point_latest(tmp_path, "step-00000006")
    with pytest.warns(UserWarning, match="not committed; using step-00000003"):
        assert checkpoint.latest_committed_step(str(tmp_path)) == 3


def test_missing_latest_after_a_commit_uses_the_newest_committed(tmp_path):
    make_step(tmp_path, 3)
    make_step(tmp_path, 6)
    with pytest.warns(UserWarning, match="is missing; using step-00000006"):
        assert checkpoint.latest_committed_step(str(tmp_path)) == 6


def test_a_resume_tries_the_step_latest_names_then_older_committed_ones_newest_first(tmp_path):
    for step in (2, 4, 6):
        make_step(tmp_path, step)
    make_step(tmp_path, 3, committed=False)
    point_latest(tmp_path, "step-00000004\n")
    assert checkpoint.resume_candidates(str(tmp_path)) == [4, 2]
    assert checkpoint.resume_candidates(str(tmp_path / "empty")) == []


def test_prune_keeps_the_newest_k_and_never_touches_newer_partial_saves():
    assert checkpoint.steps_to_prune([1, 2, 3, 4, 5], [1, 2, 3, 4], keep=2) == [1, 2]
    assert checkpoint.steps_to_prune([1, 2, 3], [1, 3], keep=3) == [2]  # abandoned partial save
    assert checkpoint.steps_to_prune([5, 6], [], keep=1) == []
    assert checkpoint.steps_to_prune([1, 2], [1, 2], keep=1) == [1]


def test_prune_removes_folders(tmp_path):
    for s in (1, 2, 3):
        make_step(tmp_path, s)
    make_step(tmp_path, 4, committed=False)
    assert checkpoint.prune(str(tmp_path), keep=1) == [1, 2]
    assert checkpoint.step_dirs(str(tmp_path)) == [3, 4]


def test_loading_an_uncommitted_step_is_a_clear_error(tmp_path):
    make_step(tmp_path, 5, committed=False)
    with pytest.raises(FileNotFoundError, match="step-00000005 is not a committed checkpoint"):
        checkpoint.load_model_state(str(tmp_path), 5)
    with pytest.raises(FileNotFoundError, match="holds no committed checkpoint"):
        checkpoint.load_model_state(str(tmp_path / "empty"))


def record(world_size=2, zero_stage=2, pipeline_stages=1, precision="fp32", step=3):
    layout = ParallelLayout(
        world_size=world_size,
        data_parallel=world_size // pipeline_stages,
        pipeline_stages=pipeline_stages,
        zero_stage=zero_stage,
    )
    return CheckpointRecord(
        step=step,
        tokens=0,
        time=0.0,
        layout=layout,
        precision=precision,
        model=ModelConfig(),
        vocab_size=50,
        config_hash="h",
        data=DataPosition(url="d", fingerprint="f", consumed_samples=0, loader={}),
        rng=[RngState.capture()],
        rng_of_rank=[0] * world_size,
    )


def now(world_size, zero_stage, pipeline_stages=1):
    return ParallelLayout(
        world_size=world_size,
        data_parallel=world_size // pipeline_stages,
        pipeline_stages=pipeline_stages,
        zero_stage=zero_stage,
    )


def test_per_parameter_state_is_used_only_when_a_zero_layout_changes():
    saved = record()
    assert reshape_route(saved, now(2, 2)) is None
    assert reshape_route(saved, now(4, 2)) == "universal"
    assert reshape_route(saved, now(2, 3)) == "universal"
    assert reshape_route(saved, now(1, 0)) == "plain"  # one fp32 rank runs stage 0
    zero0 = record(world_size=1, zero_stage=0)
    assert reshape_route(zero0, now(2, 0)) is None  # stage 0 keeps the whole optimizer state per rank
    assert reshape_route(zero0, now(2, 2)) == "universal"
    assert reshape_route(record(precision="bf16"), now(1, 0)) == "universal"
    with pytest.raises(CheckpointError, match="resumes only as bf16 ZeRO-0"):
        reshape_route(record(world_size=1, zero_stage=0, precision="bf16"), now(2, 2))
    with pytest.raises(CheckpointError, match="a pipelined run resumes only on the same world size"):
        reshape_route(record(zero_stage=1, pipeline_stages=2), now(1, 1))


def test_a_sequence_split_changes_no_zero_partition_so_its_checkpoint_loads_as_saved_either_way():
    split = ParallelLayout(world_size=2, data_parallel=1, sequence_parallel=2, zero_stage=2)
    assert reshape_route(record().model_copy(update={"layout": split}), now(2, 2)) is None
    assert reshape_route(record(), split) is None
    assert reshape_route(record().model_copy(update={"layout": split}), now(1, 0)) == "plain"


def test_a_pipelined_checkpoint_resumes_only_on_its_own_layout_even_with_the_same_ranks_and_zero_stage():
    pipelined = record(zero_stage=1, pipeline_stages=2)
    assert reshape_route(pipelined, now(2, 1, pipeline_stages=2)) is None
    for other in (now(2, 1), now(2, 0, pipeline_stages=2)):
        with pytest.raises(CheckpointError, match="a pipelined run resumes only on the same world size and layout"):
            reshape_route(pipelined, other)
    with pytest.raises(CheckpointError, match="with pipeline_stages=1; a pipelined run resumes only"):
        reshape_route(record(zero_stage=1), now(2, 1, pipeline_stages=2))


def test_the_record_round_trips_through_json_and_gives_each_rank_its_rng():
    saved = record(world_size=3).model_copy(update={"rng_of_rank": [0, 0, 0]})
    back = CheckpointRecord.model_validate_json(saved.model_dump_json())
    assert back == saved
    assert back.rng_for(2) == saved.rng[0] and back.rng_for(7) == saved.rng[0]


def test_rng_states_restore_every_generator_and_ranks_sharing_one_store_it_once():
    import random

    import numpy as np

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    state = RngState.capture()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    state.restore()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    distinct, index = distinct_states([state, state, RngState.capture(), state])
    assert len(distinct) == 2 and index == [0, 0, 1, 0]


@pytest.mark.parametrize("path", ["/etc/passwd", "../other/x.pt", "a/../../x.pt", "", "a\\b.pt", "./x.pt"])
def test_a_record_cannot_name_a_file_outside_its_step_folder(path):
    with pytest.raises(ValueError, match="not a plain relative path"):
        FileEntry(path=path, bytes=1, sha256="0" * 64, rank=0)


def test_an_unreadable_record_is_one_line_naming_the_file(tmp_path):
    make_step(tmp_path, 4)
    with pytest.raises(CheckpointError, match="step-00000004/COMMITTED is not a checkpoint record: tokens: Field required"):
        checkpoint.read_commit(str(tmp_path), 4)


def test_reading_weights_checks_every_listed_file_first_and_names_a_damaged_one(tmp_path):
    import hashlib

    url = checkpoint.step_url(str(tmp_path), 4)
    data = b"weights"
    storage.write_bytes(storage.join(url, "mp_rank_00_model_states.pt"), data + b"!")  # not what was written
    entry = FileEntry(path="mp_rank_00_model_states.pt", bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rank=0)
    saved = record(step=4).model_copy(update={"files": [entry]})
    storage.write_text(storage.join(url, checkpoints.COMMITTED), saved.model_dump_json())
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt is larger than the 7 bytes the record lists$"):
        checkpoint.load_model_state(str(tmp_path), 4)


def test_a_change_of_tensor_split_always_goes_through_whole_parameters():
    split = ParallelLayout(world_size=2, data_parallel=1, tensor_parallel=2, zero_stage=0)
    tensor2 = record(zero_stage=0).model_copy(update={"layout": split})
    assert reshape_route(tensor2, split) is None
    assert reshape_route(tensor2, now(2, 2)) == "universal"
    assert reshape_route(tensor2, now(1, 0)) == "plain"  # same ZeRO stage, other slices
    assert reshape_route(record(), split) == "plain"
    wide = ParallelLayout(world_size=4, data_parallel=2, tensor_parallel=2, zero_stage=1)
    assert reshape_route(record(world_size=4, zero_stage=1).model_copy(update={"layout": wide}), wide) is None
    with pytest.raises(CheckpointError) as err:
        reshape_route(record(world_size=4, zero_stage=1), wide)
    assert str(err.value) == (
        "checkpoint step 3 was saved with tensor_parallel=1 at ZeRO-1; a change of tensor split resumes only where "
        "the split side runs ZeRO-0 (one data-parallel fp32 rank), not on tensor_parallel=2 at ZeRO-1"
    )
