"""`kiln status`: one summary from the records, its JSON schema and exit codes, and incremental refreshes."""

import json
import subprocess
import sys
import uuid

import pytest

from ops import storage
from ops.records import RunRecords
from ops.status import RunStatus, RunWatcher, run_status, status_exit_code

STARTED = [("start", 30, {"world_size": 2, "steps": 100})]


def kiln_status(*args):
    return subprocess.run([sys.executable, "-m", "launch.cli", "status", *args], capture_output=True, text=True, timeout=120)


def check_summary(runs):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)], checkpoints={20: True, 40: False})
    status = run_status(run, now=runs.now)
    assert status.state == "running" and status.name == "tiny"
    assert (status.step, status.total_steps, status.tokens, status.total_tokens) == (40, 100, 40 * 128, 100 * 4 * 32)
    assert status.loss == pytest.approx(6.0 - 40 * 0.02) and status.tokens_per_s == 256.0
    assert status.eta_s == pytest.approx(60 * 0.5)  # 60 steps left at 2 steps/s
    assert status.elapsed_s == pytest.approx(30.0)
    assert [c.step for c in status.checkpoints] == [20, 40] and status.last_checkpoint.step == 20
    assert status.checkpoints[1].state == "incomplete" and status.last_checkpoint.latest
    assert [r.state for r in status.ranks] == ["ok", "ok"]
    assert [e.sentence for e in status.recent_events] == ["training started on 2 ranks for 100 steps"]
    assert RunStatus.model_validate_json(status.model_dump_json()) == status


def test_status_summarises_metrics_heartbeats_checkpoints_and_events(runs):
    check_summary(runs)


@pytest.mark.slow
def test_status_reads_the_same_records_from_object_storage(s3_bucket, runs):
    runs.root = f"{s3_bucket}/{uuid.uuid4().hex}"  # moto keeps every server's objects in one process-wide store
    check_summary(runs)


def check_refresh_sees_what_changed(runs):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)], checkpoints={20: True})
    watcher = RunWatcher(run)
    first = watcher.refresh(now=runs.now)
    assert len(first.series.step) == 40
    assert watcher.refresh(now=runs.now).series == first.series  # nothing new: nothing appended twice
    records = RunRecords(run)
    records.log_metrics(runs.row(41))
    records.event("checkpoint", time=runs.now, step=41, tokens=41 * 128)
    beat = runs.beat(1, step=41, age=0.1)
    records.heartbeat(beat.pop("rank"), beat.pop("step"), **beat)
    records.close()
    storage.write_text(storage.join(run, "checkpoints/step-00000041/COMMITTED"), "")
    storage.write_text(storage.join(run, "checkpoints/latest"), "step-00000041")
    later = watcher.refresh(now=runs.now).status
    assert later.step == 41 and later.ranks[1].step == 41
    assert later.recent_events[-1].sentence == "checkpoint saved at step 41 (5.2k tokens)"
    assert later.last_checkpoint.step == 41 and later.last_checkpoint.latest


def test_a_refresh_sees_new_rows_events_beats_and_checkpoints(runs):
    check_refresh_sees_what_changed(runs)


@pytest.mark.slow
def test_a_refresh_sees_what_changed_on_object_storage_despite_listing_caches(s3_bucket, runs):
    runs.root = f"{s3_bucket}/{uuid.uuid4().hex}"  # moto keeps every server's objects in one process-wide store
    check_refresh_sees_what_changed(runs)


def test_ranks_of_an_earlier_larger_attempt_are_not_counted_after_a_resume_on_fewer(runs):
    events = STARTED + [("start", 10, {"world_size": 1, "steps": 100}), ("resume", 9, {"step": 20, "world_size": 1})]
    run = runs.make(events=events, beats=[runs.beat(0), runs.beat(1, age=500.0)])
    status = run_status(run, now=runs.now)
    assert [r.rank for r in status.ranks] == [0] and status_exit_code(status) == 0


def test_evaluation_results_show_held_out_numbers_and_any_tasks(runs):
    run = runs.make(
        events=STARTED,
        evals=[
            {"step": 20, "loss": 4.0, "perplexity": 54.6},
            {
                "step": 40,
                "loss": 3.2,
                "perplexity": 24.5,
                "bits_per_byte": 1.1,
                "unigram_loss": 6.0,
                "tasks": {"cloze": {"acc": 0.31, "acc_norm": 0.33, "examples": 100}},
            },
        ],
    )
    ev = run_status(run, now=runs.now).last_eval
    assert ev.step == 40 and ev.metrics["perplexity"] == 24.5 and ev.metrics["unigram_loss"] == 6.0
    assert ev.tasks == {"cloze": {"acc": 0.31, "acc_norm": 0.33, "examples": 100}}


FINISHED = STARTED + [("finish", 1, {"step": 40})]
RANK_FAILED = STARTED + [("failure", 1, {"rank": 1, "error": "RuntimeError: x"})]


@pytest.mark.parametrize(
    "beats, events, code",
    [
        ([{}, {}], STARTED, 0),
        ([{"state": "exited"}, {"state": "exited"}], FINISHED, 0),
        ([{"idle": 9.0}, {"age": 10.0}], STARTED, 3),
        ([{}, {"age": 300.0}], STARTED, 1),
        ([{"state": "exited"}, {"state": "failed"}], RANK_FAILED, 1),
    ],
    ids=["running", "finished", "unresponsive rank", "dead rank", "failed"],
)
def test_exit_code_is_zero_when_healthy_or_finished_and_non_zero_when_not(runs, beats, events, code):
    run = runs.make(events=events, beats=[runs.beat(rank, **b) for rank, b in enumerate(beats)])
    assert status_exit_code(run_status(run, now=runs.now)) == code


def test_kiln_status_json_prints_the_schema_and_exits_by_health(runs):
    run = runs.make(events=STARTED, beats=[runs.beat(0, age=1e9), runs.beat(1, age=1e9)])
    done = kiln_status(run, "--json")
    assert done.returncode == 1, done.stderr  # beats older than any threshold: both ranks dead
    status = json.loads(done.stdout)
    assert status["schema_version"] == 1 and status["state"] == "stalled"
    assert [r["state"] for r in status["ranks"]] == ["dead", "dead"]
    for key in (
        "step",
        "total_steps",
        "tokens",
        "loss",
        "tokens_per_s",
        "mfu",
        "eta_s",
        "last_checkpoint",
        "stragglers",
        "last_eval",
    ):
        assert key in status


def test_kiln_status_of_a_url_without_a_run_is_a_one_line_error(tmp_path):
    done = kiln_status(str(tmp_path / "nothing"))
    assert done.returncode == 2
    assert done.stderr.startswith("kiln: error: ") and "no Kiln run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_refresh_fetches_no_bytes_when_nothing_changed_and_only_the_new_bytes_after(runs, monkeypatch):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)])
    watcher = RunWatcher(run)
    watcher.refresh(now=runs.now)
    fs = watcher.metrics.fs  # every follower of a local run shares this file system object
    ranges, whole = [], []
    cat_ranges, cat = fs.cat_ranges, fs.cat
    monkeypatch.setattr(
        fs,
        "cat_ranges",
        lambda paths, starts, ends, **kw: ranges.append(list(zip(starts, ends))) or cat_ranges(paths, starts, ends, **kw),
    )
    monkeypatch.setattr(fs, "cat", lambda paths, **kw: whole.append(list(paths)) or cat(paths, **kw))
    watcher.refresh(now=runs.now)
    assert ranges == [] and whole == []
    records = RunRecords(run)
    records.log_metrics(runs.row(41))
    records.close()
    assert watcher.refresh(now=runs.now).status.step == 41
    ((start, end),) = ranges[0]  # one range of one file
    assert start > 0 and end - start < 300 and whole == []  # the new row, not the file again
