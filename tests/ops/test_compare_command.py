"""`kiln compare`: several runs' loss, learning-rate and held-out curves on shared axes, in the terminal and a PNG."""

from __future__ import annotations

import matplotlib.image

from launch.cli import main
from ops.compare import load_runs, run_names


def _eval(step: int, loss: float) -> dict:
    return {
        "step": step,
        "loss": loss,
        "tasks": {"val": {"loss": loss, "perplexity": 2.718**loss, "examples": 8}},
        "display": {"val": {"type": "heldout", "metrics": [{"key": "loss", "label": "loss", "format": ".4f"}]}},
    }


def test_each_run_brings_its_training_rows_and_held_out_results(runs):
    a = runs.make(steps=20, evals=[_eval(10, 5.0), _eval(20, 4.5)])
    b = runs.make(steps=30, evals=[_eval(30, 4.0)])
    curve_a, curve_b = load_runs([a, b])
    assert (curve_a.name, curve_b.name) == ("run-1", "run-2")
    assert curve_a.steps == list(map(float, range(1, 21))) and len(curve_b.loss) == 30
    assert curve_a.loss[0] == runs.row(1)["loss"] and curve_a.lr == [3e-4] * 20
    assert (curve_a.eval_steps, curve_a.heldout_loss) == ([10.0, 20.0], [5.0, 4.5])
    assert (curve_b.eval_steps, curve_b.heldout_loss) == ([30.0], [4.0])


def test_runs_whose_folders_share_a_name_are_told_apart_by_their_urls():
    assert run_names(["s3://a/exp/run", "s3://b/exp/run", "/x/other/"]) == ["s3://a/exp/run", "s3://b/exp/run", "other"]


def test_the_command_draws_every_curve_with_both_runs_in_its_legend_and_writes_the_png(runs, tmp_path, capsys):
    a = runs.make(steps=20, evals=[_eval(20, 4.5)])
    b = runs.make(steps=20, evals=[_eval(20, 4.2)])
    png = tmp_path / "curves.png"
    assert main(["compare", a, b, "-o", str(png)]) == 0
    out = capsys.readouterr().out
    for title in ("training loss", "learning rate", "held-out loss"):
        assert title in out
    assert out.count("run-1") == 3 and out.count("run-2") == 3
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 3 * image.shape[0] // 2


def test_a_url_that_is_no_run_is_a_one_line_error(runs, tmp_path, capsys):
    a = runs.make(steps=5)
    assert main(["compare", a, str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and err.count("\n") == 1 and "missing" in err
