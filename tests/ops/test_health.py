"""Rank and run health, stragglers, throughput and ETA as pure functions of records."""

import pytest

from ops.health import (
    Heartbeat,
    assess_ranks,
    eta_seconds,
    failures_by_rank,
    health_thresholds,
    recent_throughput,
    run_state,
)

NOW = 1000.0


def hb(rank, age=0.5, idle=0.2, step_time=0.5, state="running", interval=1.0):
    return Heartbeat(
        rank=rank,
        time=NOW - age,
        last_step_at=NOW - age - idle,
        step_time_s=step_time,
        interval_s=interval,
        state=state,
        host=f"h{rank}",
        step=10,
    )


def states(report):
    return {r.rank: r.state for r in report.ranks}


def test_thresholds_follow_the_beat_interval_and_the_recent_step_time():
    t = health_thresholds([2.0, 2.0], [4.0, 4.0, 4.2])
    assert t.unresponsive_after_s == 6.0  # three missed beats
    assert t.waiting_after_s == 20.0  # five median steps
    assert t.dead_after_s == 60.0
    fast = health_thresholds([1.0], [0.01])
    assert fast.waiting_after_s == 2.0  # a floor, so a jittery millisecond step is not "waiting"


def test_a_frozen_rank_is_unresponsive_while_the_ranks_blocked_on_it_are_waiting():
    report = assess_ranks([hb(0, idle=8.0), hb(1, age=5.0), hb(2, idle=8.0)], NOW)
    assert states(report) == {0: "waiting", 1: "unresponsive", 2: "waiting"}


def test_a_rank_silent_past_the_dead_threshold_is_dead_among_live_ones():
    report = assess_ranks([hb(0), hb(1, age=120.0), hb(2)], NOW)
    assert states(report) == {0: "ok", 1: "dead", 2: "ok"}


def test_a_rank_whose_last_beat_says_failed_or_that_a_failure_names_is_dead():
    report = assess_ranks([hb(0, state="failed"), hb(1), hb(2)], NOW, failures={2: NOW})
    assert states(report) == {0: "dead", 1: "ok", 2: "dead"}


def test_silent_ranks_of_a_run_that_ended_have_exited_not_died():
    report = assess_ranks([hb(0, age=500.0), hb(1, state="exited")], NOW, run_over=True)
    assert states(report) == {0: "exited", 1: "exited"}


def test_a_step_time_far_above_the_median_marks_a_straggler_with_the_spread():
    report = assess_ranks([hb(0), hb(1), hb(2, step_time=0.55), hb(3, step_time=1.6)], NOW)
    assert report.stragglers == [3]
    assert [r.straggler for r in report.ranks] == [False, False, False, True]
    assert (report.step_time.min_s, report.step_time.median_s, report.step_time.max_s) == (0.5, 0.525, 1.6)


def test_unresponsive_ranks_do_not_count_in_the_step_time_spread():
    report = assess_ranks([hb(0), hb(1, age=10.0, step_time=9.0)], NOW)
    assert report.stragglers == [] and report.step_time.max_s == 0.5


@pytest.mark.parametrize(
    "kinds, expected",
    [
        (["start", "finish"], "finished"),
        (["start", "checkpoint", "preemption"], "preempted"),
        (["start", "failure"], "failed"),
        (["start", "failure", "restart"], "restarting"),
        (["start", "failure", "restart", "start"], "running"),
        (["start", "resume", "checkpoint"], "running"),
    ],
)
def test_run_state_follows_the_last_lifecycle_event(kinds, expected):
    ranks = assess_ranks([hb(0), hb(1)], NOW).ranks
    assert run_state([{"event": k} for k in kinds], ranks) == expected


def test_a_running_run_with_no_rank_stepping_is_stalled_and_one_without_beats_is_starting():
    stuck = assess_ranks([hb(0, idle=30.0), hb(1, age=10.0)], NOW).ranks
    assert run_state([{"event": "start"}], stuck) == "stalled"
    assert run_state([], []) == "starting"


def test_failures_are_attributed_to_the_ranks_they_name():
    events = [
        {"event": "failure", "rank": 1, "time": 5.0},
        {"event": "failure", "time": 6.0},
        {"event": "failure", "rank": 1, "time": 7.0},
        {"event": "restart", "time": 8.0, "failures": [{"rank": 2, "host": "a", "exit_code": -9}]},
    ]
    assert failures_by_rank(events) == {1: 7.0, 2: 8.0}


def test_throughput_and_eta_use_only_the_current_attempt():
    rows = [{"step": s, "time": 100.0 + s, "tokens_per_s": 50.0} for s in range(1, 11)]
    rows += [{"step": s, "time": 200.0 + 2 * s, "tokens_per_s": 25.0} for s in range(6, 11)]  # restarted at 6
    pace = recent_throughput(rows)
    assert pace.steps_per_s == pytest.approx(0.5) and pace.tokens_per_s == 25.0 and pace.mfu is None
    assert eta_seconds(10, 30, pace.steps_per_s) == pytest.approx(40.0)
    assert eta_seconds(10, None, 1.0) is None and eta_seconds(None, 30, 1.0) is None
