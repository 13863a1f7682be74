"""`train.log_to: [tensorboard]`: event files that TensorBoard's own reader shows as the run records say."""

from __future__ import annotations

import importlib.util

import pytest

from launch.config import ConfigError, load_config
from ops.metrics_table import metrics_table
from ops.records import RunRecords
from ops.scalar_logs import ScalarLogs, log_eval, segment_name
from support.tensorboard_files import tensorboard_scalars

KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")


def _row(step: int, attempt: int) -> dict:
    return {
        "step": step,
        "tokens": 64 * step,
        "loss": 7.0 - step / 10 + attempt,
        "lr": 1e-3 * step,
        "grad_norm": 0.5,
        "tokens_per_s": 1000.0 + attempt,
        "mfu": None,
    }


def _attempt(run_url: str, steps: range, attempt: int) -> None:
    """What rank 0 does: each row to the records and to the scalar logs."""
    records, scalars = RunRecords(run_url), ScalarLogs(run_url, ["tensorboard"], flush_every_s=0.01)
    for step in steps:
        row = _row(step, attempt)
        records.log_metrics(row)
        scalars.add(step, row)
    assert scalars.close() and records.close()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_tensorboard_shows_the_records_metrics_a_resumed_attempt_replacing_the_abandoned_steps(where, tmp_path, request):
    run_url = str(tmp_path / "run") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/runs/tb"
    _attempt(run_url, range(1, 7), attempt=1)
    _attempt(run_url, range(4, 9), attempt=2)  # resumed from the checkpoint of step 3
    shown = tensorboard_scalars(run_url)
    table = metrics_table(run_url)
    assert [r["step"] for r in table] == list(range(1, 9))
    for key in KEYS:
        assert [step for step, _ in shown[f"train/{key}"]] == list(range(1, 9))
        assert [value for _, value in shown[f"train/{key}"]] == pytest.approx([r[key] for r in table], rel=1e-6)
    assert "train/mfu" not in shown  # no value on CPU: nothing drawn, rather than zeros


def test_evaluation_results_appear_beside_the_training_curves(tmp_path):
    run_url = str(tmp_path / "run")
    _attempt(run_url, range(1, 5), attempt=1)
    log_eval(run_url, ["tensorboard"], 2, {"heldout": {"loss": 6.5, "examples": 8}, "cloze": {"acc": 0.25}})
    log_eval(run_url, ["tensorboard"], 4, {"heldout": {"loss": 6.1, "examples": 8}, "cloze": {"acc": 0.5}})
    shown = tensorboard_scalars(run_url)
    assert shown["eval/heldout/loss"] == [(2, 6.5), (4, pytest.approx(6.1))]
    assert shown["eval/cloze/acc"] == [(2, 0.25), (4, 0.5)]
    assert [s for s, _ in shown["train/loss"]] == [1, 2, 3, 4]


def test_segments_named_within_one_clock_tick_still_sort_in_the_order_written():
    names = [segment_name() for _ in range(200)]
    assert sorted(names) == names and len(set(names)) == len(names)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_without_its_package_is_a_one_line_error_naming_the_fix(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("data:\n  inputs: [in.jsonl]\n  output: data\ntrain:\n  log_to: [tensorboard, wandb]\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(config), [])
    message = str(error.value)
    assert "\n" not in message
    assert "train.log_to: wandb is not installed for " in message and "pip install wandb" in message
