"""The dashboard frame on recorded runs: what a person sees for each kind of trouble, at 80 and 140 columns."""

import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from ops.dashboard import render, render_summary
from ops.status import RunWatcher

STARTED = [("start", 60, {"world_size": 4, "steps": 100, "device": "cpu", "precision": "fp32", "zero_stage": 2})]
CHECKPOINTED = STARTED + [("checkpoint", 30, {"step": 20, "tokens": 2560})]


def frame(run, now, width=120, height=None) -> str:
    console = Console(record=True, width=width, height=height or 200, color_system=None)
    console.print(render(RunWatcher(run).refresh(now=now), width, height, console=console))
    return console.export_text()


def rank_line(text: str, rank: int) -> str:
    """The ranks-table row of ``rank`` (its host is node-<rank>)."""
    (line,) = [line for line in text.splitlines() if re.search(rf"\b{rank}\s+node-{rank}\s", line)]
    return line


@pytest.mark.parametrize("width", [80, 140])
def test_one_dead_rank_among_live_ones_is_named_and_the_others_shown_waiting_for_it(runs, width):
    beats = [runs.beat(0, idle=40.0), runs.beat(1, idle=40.0), runs.beat(2, age=300.0), runs.beat(3, idle=40.0)]
    text = frame(runs.make(events=CHECKPOINTED, beats=beats), runs.now, width)
    assert "stalled" in text
    assert "dead" in rank_line(text, 2)
    for rank in (0, 1, 3):
        assert "waiting" in rank_line(text, rank)
    assert "1 dead · 3 waiting" in text
    assert max(len(line) for line in text.splitlines()) <= width


def test_a_straggler_is_flagged_with_the_step_time_spread(runs):
    beats = [runs.beat(0), runs.beat(1), runs.beat(2, step_time=0.6), runs.beat(3, step_time=2.0)]
    text = frame(runs.make(events=STARTED, beats=beats), runs.now)
    assert "straggler" in rank_line(text, 3) and "straggler" not in rank_line(text, 0)
    assert "min 500ms · median 550ms · max 2.0s" in text
    assert "stragglers: rank 3" in text
    assert "running" in text


def test_a_frozen_rank_is_unresponsive_and_its_peers_wait(runs):
    beats = [runs.beat(0, idle=9.0), runs.beat(1, age=8.0)]
    text = frame(runs.make(events=STARTED, beats=beats), runs.now)
    assert "unresponsive" in rank_line(text, 1) and "waiting" in rank_line(text, 0)


def test_a_restarting_run_says_which_rank_failed_and_which_restart_this_is(runs):
    events = CHECKPOINTED + [
        ("failure", 5, {"rank": 1, "host": "node-1", "error": "RuntimeError: connection reset"}),
        (
            "restart",
            4,
            {
                "launcher": "torchrun",
                "exit_code": 1,
                "attempt": 1,
                "max_restarts": 3,
                "step": 20,
                "failures": [{"rank": 1, "host": "node-1", "exit_code": -9, "pid": 1001}],
            },
        ),
    ]
    text = frame(runs.make(events=events, beats=[runs.beat(0, age=6.0, idle=6.0)]), runs.now)
    assert "restarting" in text
    assert "rank 1 on host node-1 failed with exit code -9; restart 1 of 3 from step 20" in text
    assert "rank 1 on host node-1 failed: RuntimeError: connection reset" in text
    assert "'event'" not in text and "{" not in text  # sentences, not dicts


def test_a_preempted_run_shows_the_save_and_its_ranks_exited(runs):
    events = CHECKPOINTED + [("preemption", 2, {"step": 33, "signals": {"0": "SIGTERM", "1": "SIGTERM"}, "exit_code": 75})]
    beats = [runs.beat(0, state="exited", age=1.0), runs.beat(1, state="exited", age=1.0)]
    text = frame(runs.make(events=events, beats=beats, checkpoints={20: True, 33: True}), runs.now)
    assert "preempted" in text
    assert "preempted (SIGTERM to ranks 0, 1): saved at step 33, exit 75 asks to be requeued" in text
    assert "exited" in rank_line(text, 0) and "exited" in rank_line(text, 1)
    assert "step 33" in text and "latest" in text


HELDOUT = {"loss": 3.2, "perplexity": 24.5, "bits_per_byte": 1.1, "unigram_loss": 5.6, "unigram_bits_per_byte": 2.6}
EVAL_AT_40 = {
    "step": 40,
    **HELDOUT,  # the held-out values are also at the top level of the file
    "tasks": {"heldout": {**HELDOUT, "examples": 256}, "cloze": {"acc": 0.31, "acc_norm": 0.33, "examples": 100}},
    "display": {
        "heldout": {
            "type": "heldout",
            "metrics": [
                {"key": "loss", "label": "loss (nats/token)", "format": ".4f"},
                {"key": "perplexity", "label": "perplexity", "format": ".2f"},
                {"key": "bits_per_byte", "label": "bits per byte", "format": ".4f"},
                {"key": "unigram_loss", "label": "unigram baseline loss", "format": ".4f"},
                {"key": "unigram_bits_per_byte", "label": "unigram baseline bits per byte", "format": ".4f"},
                {"key": "examples", "label": "windows", "format": ",d"},
            ],
        },
        "cloze": {
            "type": "multiple_choice",
            "metrics": [
                {"key": "acc", "label": "accuracy", "format": ".4f"},
                {"key": "acc_norm", "label": "accuracy, length-normalised", "format": ".4f"},
                {"key": "examples", "label": "examples", "format": ",d"},
            ],
        },
    },
}


def test_a_finished_run_shows_its_curves_checkpoints_and_evaluation(runs):
    events = CHECKPOINTED + [("finish", 1, {"step": 40, "tokens": 5120})]
    beats = [runs.beat(0, state="exited"), runs.beat(1, state="exited")]
    text = frame(runs.make(events=events, beats=beats, checkpoints={20: True, 40: True}, evals=[EVAL_AT_40]), runs.now)
    assert "finished" in text and "40 / 100 (40%)" in text
    assert "finished at step 40 after 5.1k tokens" in text
    for title in ("loss", "learning rate", "tokens/s"):
        assert title in text
    assert "┤" in text and "step" in text  # axes with tick marks and a label
    assert "perplexity 24.50" in text
    assert re.search(r"cloze\s+accuracy 0\.3100 · accuracy, length-normalised 0\.3300 · examples 100", text)
    assert "ETA" in text


def test_the_evaluation_panel_shows_each_task_once_with_readable_names_in_80_columns(runs):
    events = CHECKPOINTED + [("finish", 1, {"step": 40, "tokens": 5120})]
    text = frame(runs.make(events=events, evals=[EVAL_AT_40]), runs.now, width=80)
    panel = text[text.index("evaluation · step 40") :].split("╰")[0]
    assert max(len(line) for line in text.splitlines()) <= 80
    assert panel.count("24.50") == 1 and panel.count("3.2000") == 1  # no second copy of the held-out numbers
    assert "bits_" not in panel and "…" not in panel  # labels from the report, never cut
    for label in ("loss (nats/token)", "unigram baseline bits per byte 2.6000", "windows 256", "accuracy 0.3100"):
        assert label in panel
    assert re.search(r"│ heldout\s+loss \(nats/token\) 3\.2000", panel) and re.search(r"│ cloze\s+accuracy", panel)


def test_charts_shrink_to_the_terminal_height_and_go_when_it_is_too_short(runs):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)])
    tall = frame(run, runs.now, width=80, height=60)
    short = frame(run, runs.now, width=80, height=20)
    assert "learning rate" in tall and "┤" in tall
    assert "learning rate" not in short
    assert "node-0" in short  # the ranks stay


def test_status_summary_has_the_facts_without_charts(runs):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)])
    console = Console(record=True, width=100, color_system=None)
    console.print(render_summary(RunWatcher(run).refresh(now=runs.now).status, 100))
    text = console.export_text()
    assert "running" in text and "node-1" in text and "training started on 4 ranks" in text
    assert "┤" not in text


def test_kiln_monitor_once_prints_one_frame_and_a_url_without_a_run_is_an_error(runs, tmp_path):
    run = runs.make(events=STARTED, beats=[runs.beat(0), runs.beat(1)])
    env = {**os.environ, "COLUMNS": "100", "LINES": "40"}
    shown = subprocess.run(
        [sys.executable, "-m", "launch.cli", "monitor", run, "--once"], capture_output=True, text=True, timeout=120, env=env
    )
    assert shown.returncode == 0, shown.stderr
    assert "ranks" in shown.stdout and "loss" in shown.stdout and "training started on 4 ranks" in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "launch.cli", "monitor", str(tmp_path / "none"), "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("kiln: error: ")


MARKUP = ["[red]RED[/]", "[/]", "[link=https://example.invalid]click[/link]", "[bold", "x[/bold]y"]


@pytest.mark.parametrize("hostile", MARKUP)
def test_text_from_records_shows_literally_never_as_markup(runs, hostile):
    import yaml

    events = STARTED + [("failure", 5, {"rank": 1, "host": "node-1", "error": f"RuntimeError: {hostile}"})]
    evals = [{"step": 40, "loss": 3.2, "tasks": {f"t{hostile}": {f"m{hostile}": 0.5, "note": hostile}}}]
    config = yaml.safe_dump({"run": {"name": f"n{hostile}"}, "train": {"steps": 100}})
    beats = [runs.beat(0), runs.beat(1, host=f"h{hostile}")]
    run = runs.make(events=events, beats=beats, evals=evals, config=config)
    snapshot = RunWatcher(run).refresh(now=runs.now)
    assert snapshot.status.name == f"n{hostile}"
    for drawn in (render(snapshot, 400), render_summary(snapshot.status, 400)):
        console = Console(record=True, width=400, height=200, color_system="truecolor")
        console.print(drawn)
        text = console.export_text()
        for shown in (f"n{hostile}", f"h{hostile}", f"RuntimeError: {hostile}", f"t{hostile}", f"m{hostile}"):
            assert shown in text, shown
        assert "\x1b]8;" not in console.export_text(styles=True)  # no terminal hyperlink
