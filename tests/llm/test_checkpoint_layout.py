"""Checkpoint discovery and retention over real folders (no DeepSpeed needed)."""
import pytest

from llm import checkpoint
from ops import storage


def make_step(run, step, committed=True):
    url = checkpoint.step_url(str(run), step)
    storage.write_bytes(storage.join(url, "mp_rank_00_model_states.pt"), b"x")
    if committed:
        storage.write_json(storage.join(url, checkpoint.COMMITTED), {"step": step})


def point_latest(run, text):
    storage.write_text(storage.join(checkpoint.checkpoints_url(str(run)), checkpoint.LATEST), text)


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



def test_per_parameter_state_is_used_only_when_a_zero_layout_changes():
    saved = {"step": 3, "world_size": 2, "zero_stage": 2, "pipeline_stages": 1, "precision": "fp32"}
    assert checkpoint.reshape_route(saved, 2, 2, 1) is None
    assert checkpoint.reshape_route(saved, 4, 2, 1) == "universal"
    assert checkpoint.reshape_route(saved, 2, 3, 1) == "universal"
    assert checkpoint.reshape_route(saved, 1, 0, 1) == "plain"  # one fp32 rank runs stage 0
    zero0 = {**saved, "world_size": 1, "zero_stage": 0}
    assert checkpoint.reshape_route(zero0, 2, 0, 1) is None  # stage 0 keeps the whole optimizer state per rank
    assert checkpoint.reshape_route(zero0, 2, 2, 1) == "universal"
    assert checkpoint.reshape_route({**saved, "precision": "bf16"}, 1, 0, 1) == "universal"
    with pytest.raises(RuntimeError, match="resumes only as bf16 ZeRO-0"):
        checkpoint.reshape_route({**zero0, "precision": "bf16"}, 2, 2, 1)
    with pytest.raises(RuntimeError, match="a pipelined run resumes only on the same world size"):
        checkpoint.reshape_route({**saved, "zero_stage": 1, "pipeline_stages": 2}, 1, 1, 1)
