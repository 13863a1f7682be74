"""A rank's heartbeat thread: alive before the first step, beating on its own, and a last word when it stops."""

import time

import pytest

from ops.heartbeat import HeartbeatThread
from ops.records import RunRecords


def only_beat(records):
    (beat,) = records.heartbeats()
    return beat


@pytest.mark.parametrize("failed, state", [(False, "exited"), (True, "failed")])
def test_a_heartbeat_is_written_at_start_follows_the_steps_and_says_how_the_rank_ended(tmp_path, failed, state):
    records = RunRecords(str(tmp_path / "run"))
    heartbeat = HeartbeatThread(records, rank=3, interval_s=3600)
    heartbeat.start()
    first = only_beat(records)
    assert (first["rank"], first["step"], first["state"], first["last_step_at"]) == (3, 0, "running", None)
    heartbeat.at_step(20)
    heartbeat.step_done(21, 0.25)
    heartbeat.stop(failed=failed)
    last = only_beat(records)
    assert (last["step"], last["step_time_s"], last["state"], last["interval_s"]) == (21, 0.25, state, 3600)
    assert first["started_at"] == last["started_at"] <= last["last_step_at"] <= last["time"]


def test_the_thread_keeps_beating_while_no_step_finishes(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    heartbeat = HeartbeatThread(records, rank=0, interval_s=0.01)
    heartbeat.step_done(1, 0.1)
    heartbeat.start()
    try:
        seen = only_beat(records)
        deadline = time.monotonic() + 60
        while only_beat(records)["time"] <= seen["time"] + 0.05:  # the main thread does no step meanwhile
            assert time.monotonic() < deadline, "no new beat"
            time.sleep(0.01)
    finally:
        heartbeat.stop()
    later = only_beat(records)
    assert later["last_step_at"] == seen["last_step_at"] and later["step"] == 1
