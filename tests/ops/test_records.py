"""Run records: buffered segment writers, incremental readers, old single-file runs, storage failures."""

import json
import os
import subprocess
import sys

import pytest

from ops.record_layout import EVENTS_STREAM, METRICS_STREAM, partition_of
from ops.record_readers import StreamFollower
from ops.record_writer import RecordWriter
from ops.records import MetricsFollower, RunRecords
from ops.segment_sinks import AppendSegmentSink, Segment


def test_rows_wait_in_the_buffer_until_a_flush_and_then_are_read_once(tmp_path):
    run = str(tmp_path / "run")
    records = RunRecords(run, flush_every_s=3600)
    follower = MetricsFollower(run)
    records.log_metrics({"step": 1, "loss": 2.0})
    assert follower.new_rows() == []  # still in this process's buffer
    assert records.flush()
    assert [(r["step"], r["loss"]) for r in follower.new_rows()] == [(1, 2.0)]
    records.log_metrics({"step": 2})
    records.flush()
    assert [r["step"] for r in follower.new_rows()] == [2]
    assert follower.new_rows() == []
    records.close()


def test_reads_through_records_see_this_process_own_buffered_rows(tmp_path):
    records = RunRecords(str(tmp_path / "run"), flush_every_s=3600)
    records.log_metrics({"step": 1})
    records.event("start", world_size=2)
    assert [m["step"] for m in records.metrics()] == [1]
    assert [e["event"] for e in records.events()] == ["start"]
    records.close()


def test_every_writer_keeps_its_own_segments_and_readers_merge_them_in_time_order(tmp_path):
    run = str(tmp_path / "run")
    first = RecordWriter(AppendSegmentSink(run, "writer-a"), flush_every_s=3600)
    second = RecordWriter(AppendSegmentSink(run, "writer-b"), flush_every_s=3600)
    first.append(EVENTS_STREAM, {"time": 1.0, "event": "start"})
    second.append(EVENTS_STREAM, {"time": 2.0, "event": "restart"})
    first.append(EVENTS_STREAM, {"time": 3.0, "event": "finish"})
    second.close()
    first.close()
    assert [e["event"] for e in RunRecords(run).events()] == ["start", "restart", "finish"]


def test_a_half_written_last_line_is_read_once_it_is_complete(tmp_path):
    run = str(tmp_path / "run")
    sink = AppendSegmentSink(run, "writer")
    follower = StreamFollower(run, METRICS_STREAM)
    hour = partition_of(0)
    sink.write(Segment(METRICS_STREAM, hour, 1, b'{"step": 1, "time": 1}\n{"step": 2, "ti', 2))
    assert [r["step"] for r in follower.new_rows()] == [1]
    assert follower.new_rows() == []
    sink.write(Segment(METRICS_STREAM, hour, 2, b'me": 2}\n', 0))
    assert [r["step"] for r in follower.new_rows()] == [2]
    assert [r["step"] for r in RunRecords(run).metrics()] == [1, 2]


def test_a_failed_write_keeps_its_rows_reports_once_and_succeeds_later(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics").write_text("a file where the metrics folder should be")
    messages = []
    writer = RecordWriter(AppendSegmentSink(str(run), "writer"), flush_every_s=3600, report=messages.append)
    for step in (1, 2):
        writer.append(METRICS_STREAM, {"step": step, "time": step})
    assert writer.flush() is False
    writer.append(METRICS_STREAM, {"step": 3, "time": 3})
    assert writer.flush() is False
    assert len(messages) == 1 and "could not write" in messages[0]
    assert writer.pending_rows() == 3
    (run / "metrics").unlink()
    assert writer.flush() is True
    assert "written again" in messages[-1]
    assert [r["step"] for r in RunRecords(str(run)).metrics()] == [1, 2, 3]


def test_appending_never_raises_even_for_values_json_cannot_encode(tmp_path):
    records = RunRecords(str(tmp_path / "run"), flush_every_s=3600)
    records.log_metrics({"step": 1, "note": object(), "path": tmp_path})
    (row,) = records.metrics()
    assert row["step"] == 1 and isinstance(row["note"], str) and row["path"] == str(tmp_path)
    records.close()


EXITS = {
    "normal end": "records.log_metrics({'step': 1}); records.event('finish', step=1)",
    "uncaught exception": "records.log_metrics({'step': 1}); records.event('failure', rank=0); raise SystemExit('boom')",
    "preemption exit 75": "records.log_metrics({'step': 1}); records.event('preemption', step=1); sys.exit(75)",
    "error raised": "records.log_metrics({'step': 1}); records.event('failure', rank=0); raise RuntimeError('x')",
}


@pytest.mark.parametrize("how", sorted(EXITS))
def test_buffered_rows_reach_storage_when_the_process_exits(tmp_path, how):
    run = str(tmp_path / "run")
    script = (
        f"import sys\nfrom ops.records import RunRecords\nrecords = RunRecords({run!r}, flush_every_s=3600)\n{EXITS[how]}\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=120)
    records = RunRecords(run)
    assert [m["step"] for m in records.metrics()] == [1]
    assert len(records.events()) == 1


def test_only_a_preemption_recorded_after_the_launch_counts(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    records.event("preemption", step=3)
    (event,) = records.events()
    assert records.preempted_since(event["time"] - 1)
    assert not records.preempted_since(event["time"] + 1)
    records.close()


def test_heartbeats_are_read_per_rank_in_rank_order(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    records.heartbeat(1, 5, state="running")
    records.heartbeat(0, 4)
    beats = records.heartbeats()
    assert [(b["rank"], b["step"]) for b in beats] == [(0, 4), (1, 5)]
    assert beats[1]["state"] == "running" and beats[0]["pid"] == os.getpid()
    json.dumps(beats)
