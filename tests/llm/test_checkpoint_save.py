"""The asynchronous save protocol with two real ranks (tests/llm/saver_ranks.py drives the saver directly)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seen(ranks, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saver")
    out = tmp / "seen.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--log-dir",
        str(tmp / "torchrun"),
        str(ranks.repo / "tests" / "llm" / "saver_ranks.py"),
        str(tmp / "run"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=ranks.env(), cwd=ranks.repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, ranks.errors(proc)
    return json.loads(out.read_text())


def test_a_save_holds_the_weights_of_its_step_while_training_goes_on(seen):
    assert seen["weights_at_save_time"] is True
    assert seen["weights_changed_since"] is True


def test_a_failed_write_on_one_rank_commits_nothing_and_every_rank_hears_why(seen):
    for rank in (0, 1):
        assert "rank 1 could not write its part of" in seen[f"error_on_rank_{rank}"]
        assert "No space left on device" in seen[f"error_on_rank_{rank}"]
    assert seen["latest_after_failure"] == 1
    assert seen["step_2_committed"] is False


def test_saves_back_to_back_commit_one_after_the_other(seen):
    assert seen["committed"] == [1, 3, 4]
    assert seen["latest"] == 4
    assert seen["files_of_4"] == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
