import json

import pytest

from ops import storage
from ops.checkpoints import list_checkpoints
from ops.dashboard import render, run_state, run_status, sparkline
from ops.records import RunRecords


def fill_run(run_url: str) -> RunRecords:
    records = RunRecords(run_url)
    records.event("start", world_size=2)
    for step in range(1, 6):
        records.log_metrics({"step": step, "loss": 10.0 - step, "lr": 1e-3, "tokens_per_s": 100.0, "mfu": None})
    records.heartbeat(0, 5)
    records.heartbeat(1, 5)
    for step, committed in ((2, True), (4, True), (5, False)):
        root = storage.join(run_url, f"checkpoints/step-{step:08d}")
        storage.write_text(storage.join(root, "model.bin"), "x")
        if committed:
            storage.write_text(storage.join(root, "COMMITTED"), "")
    storage.write_text(storage.join(run_url, "checkpoints/latest"), "step-00000004")
    storage.write_text(storage.join(run_url, "config.yaml"), "train:\n  steps: 10\n")
    return records


def check_status(run_url: str):
    fill_run(run_url)
    status = run_status(run_url)
    assert status["state"] == "running"
    assert status["step"] == 5 and status["total_steps"] == 10
    assert status["loss_history"] == [9.0, 8.0, 7.0, 6.0, 5.0]
    assert [r["rank"] for r in status["ranks"]] == [0, 1]
    assert status["latest_checkpoint"] == 4
    assert status["checkpoints"] == [2, 4, 5]
    json.dumps(status)  # `kiln status --json` must be able to print it


def test_status_reads_metrics_heartbeats_and_committed_checkpoints_locally(tmp_path):
    check_status(str(tmp_path / "run"))


@pytest.mark.slow
def test_status_reads_the_same_records_from_object_storage(s3_bucket):
    check_status(f"{s3_bucket}/runs/a")


def test_only_committed_checkpoints_count_and_latest_is_marked(tmp_path):
    run_url = str(tmp_path / "run")
    fill_run(run_url)
    entries = {e.step: e for e in list_checkpoints(run_url)}
    assert entries[5].committed is False
    assert entries[4].committed and entries[4].latest
    assert not entries[2].latest


def test_run_state_follows_the_last_terminal_event():
    beat = [{"time": 1000.0}]
    assert run_state([{"event": "start"}, {"event": "finish"}], beat, now=1001.0) == "finished"
    assert run_state([{"event": "start"}, {"event": "preemption"}], beat, now=1001.0) == "preempted"
    assert run_state([{"event": "failure"}, {"event": "restart"}], beat, now=1001.0) == "running"
    assert run_state([{"event": "start"}], beat, now=5000.0) == "stalled"
    assert run_state([], [], now=0.0) == "not started"


def test_sparkline_maps_min_to_lowest_and_max_to_highest_block():
    line = sparkline([3.0, 2.0, 1.0])
    assert line[0] == "█" and line[-1] == "▁" and len(line) == 3
    assert sparkline([]) == ""


def test_sparkline_of_a_long_curve_averages_into_the_width():
    from ops.dashboard import bucket_means

    assert bucket_means([1.0, 3.0, 5.0, 7.0], 2) == [2.0, 6.0]
    line = sparkline([10.0 - i / 100 for i in range(1000)], width=20)
    assert len(line) == 20 and line[0] == "█" and line[-1] == "▁"


def test_truncated_last_metrics_line_is_ignored(tmp_path):
    run_url = str(tmp_path / "run")
    records = RunRecords(run_url)
    records.log_metrics({"step": 1, "loss": 2.0})
    with open(tmp_path / "run" / "metrics" / "train.jsonl", "a") as f:
        f.write('{"step": 2, "lo')
    assert [m["step"] for m in records.metrics()] == [1]


def test_dashboard_renders_a_run_with_evaluations(tmp_path):
    from rich.console import Console

    run_url = str(tmp_path / "run")
    fill_run(run_url)
    storage.write_json(storage.join(run_url, "eval/step-00000004.json"),
                       {"step": 4, "loss": 3.2, "perplexity": 24.5, "bits_per_byte": 1.1, "unigram_loss": 6.0})
    console = Console(record=True, width=120)
    console.print(render(run_status(run_url)))
    text = console.export_text()
    assert "running" in text and "5/10" in text and "3.2000" in text and "rank" in text


def test_metrics_follower_returns_each_complete_row_once(tmp_path):
    from ops.records import MetricsFollower

    run_url = str(tmp_path / "run")
    records = RunRecords(run_url)
    follower = MetricsFollower(run_url)
    assert follower.new_rows() == []
    records.log_metrics({"step": 1})
    records.log_metrics({"step": 2})
    assert [r["step"] for r in follower.new_rows()] == [1, 2]
    with open(tmp_path / "run" / "metrics" / "train.jsonl", "a") as f:
        f.write('{"step": 3')
    assert follower.new_rows() == []
    with open(tmp_path / "run" / "metrics" / "train.jsonl", "a") as f:
        f.write(', "loss": 1.0}\n')
    assert [r["step"] for r in follower.new_rows()] == [3]
    assert follower.new_rows() == []


def test_only_a_preemption_recorded_after_the_launch_counts(tmp_path):
    records = RunRecords(str(tmp_path / "run"))
    records.event("preemption", step=3)
    later = json.loads((tmp_path / "run" / "events.jsonl").read_text())["time"] + 1
    assert records.preempted_since(later - 2)
    assert not records.preempted_since(later)
