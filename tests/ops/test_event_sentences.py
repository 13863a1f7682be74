"""Events are shown as sentences, with whatever fields launchers add; unknown kinds still read."""

import pytest

from ops.event_sentences import sentence


@pytest.mark.parametrize(
    "event, expected",
    [
        (
            {"event": "restart", "rank": 3, "host": "b", "exit_code": -9, "attempt": 1, "max_restarts": 3, "step": 400},
            "rank 3 on host b failed with exit code -9; restart 1 of 3 from step 400",
        ),
        (
            {"event": "restart", "attempt": 2, "exit_code": 1, "host": "login"},
            "the ranks on host login failed with exit code 1; restart 2",
        ),
        (
            {
                "event": "restart",
                "launcher": "torchrun",
                "exit_code": 1,
                "attempt": 1,
                "max_restarts": 2,
                "step": 5,
                "failures": [{"rank": 1, "host": "a", "exit_code": -9, "pid": 7}, {"rank": 0, "host": "a", "exit_code": -15}],
            },
            "rank 1 on host a failed with exit code -9, rank 0 on host a failed with exit code -15; "
            "restart 1 of 2 from step 5",
        ),
        (
            {
                "event": "failure",
                "launcher": "torchrun",
                "exit_code": 1,
                "attempts": 3,
                "max_restarts": 2,
                "failures": [{"rank": 1, "host": "a", "exit_code": 1}],
            },
            "training failed with exit code 1 after 3 attempts: rank 1 on host a failed with exit code 1",
        ),
        (
            {
                "event": "start",
                "world_size": 2,
                "device": "cpu",
                "precision": "fp32",
                "zero_stage": 2,
                "pipeline_stages": 1,
                "steps": 30,
            },
            "training started on 2 ranks (cpu, fp32, ZeRO-2) for 30 steps",
        ),
        (
            {"event": "resume", "step": 20, "world_size": 1, "reshaped": True},
            "resumed from the checkpoint of step 20 on 1 rank, resharded to the new layout",
        ),
        (
            {"event": "failure", "rank": 1, "host": "a", "error": "RuntimeError: boom"},
            "rank 1 on host a failed: RuntimeError: boom",
        ),
        ({"event": "failure", "exit_code": 1, "attempts": 2}, "training failed with exit code 1 after 2 attempts"),
        ({"event": "checkpoint", "step": 400, "tokens": 1_600_000}, "checkpoint saved at step 400 (1.6M tokens)"),
        (
            {"event": "preemption", "step": 30, "signals": {"0": "SIGTERM", "1": "SIGTERM"}, "exit_code": 75},
            "preempted (SIGTERM to ranks 0, 1): saved at step 30, exit 75 asks to be requeued",
        ),
        ({"event": "finish", "step": 30, "tokens": 3840}, "finished at step 30 after 3.8k tokens"),
    ],
)
def test_each_event_kind_reads_as_a_sentence(event, expected):
    assert sentence({"time": 1.0, "pid": 7, **event}) == expected


def test_an_unknown_event_is_shown_with_its_fields_and_no_bookkeeping():
    assert sentence({"event": "eval_done", "time": 1.0, "pid": 3, "step": 5, "loss": 2.5}) == "eval_done: loss=2.5, step=5"


def test_a_known_event_with_fields_of_unexpected_types_falls_back_to_the_generic_form():
    assert sentence({"event": "start", "world_size": 2, "pipeline_stages": "two"}).startswith("start: ")
