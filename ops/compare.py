"""``kiln compare``: the loss, learning-rate and held-out curves of several runs on shared axes.

Each run's curves come from its records only (``ops.metrics_table`` for the training rows, the
evaluation results under ``eval/`` for the held-out loss), so runs on any fsspec URL compare alike.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from rich.console import Group, RenderableType

from ops import storage
from ops.charts import lines_chart
from ops.metrics_table import metrics_table
from ops.record_readers import ChangedFiles

CHART_HEIGHT = 14


@dataclass
class RunCurves:
    name: str
    steps: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[float] = field(default_factory=list)
    heldout_loss: list[float] = field(default_factory=list)

    def panels(self) -> dict[str, tuple[list[float], list[float]]]:
        return {
            "training loss": (self.steps, self.loss),
            "learning rate": (self.steps, self.lr),
            "held-out loss": (self.eval_steps, self.heldout_loss),
        }


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def heldout_loss(result: dict) -> float:
    """The held-out task's loss in one evaluation result (NaN when it has none)."""
    tasks = result.get("tasks") if isinstance(result.get("tasks"), dict) else {}
    display = result.get("display") if isinstance(result.get("display"), dict) else {}
    for name, shown in display.items():
        if isinstance(shown, dict) and shown.get("type") == "heldout" and isinstance(tasks.get(name), dict):
            return _number(tasks[name].get("loss"))
    return _number(result.get("loss"))


def run_names(runs: list[storage.Place]) -> list[str]:
    """Short legend names: each run folder's last part, or the whole URL where two runs share it."""
    run_urls = [str(run) for run in runs]
    last = [url.rstrip("/").rsplit("/", 1)[-1] or url for url in run_urls]
    return [short if last.count(short) == 1 else url for short, url in zip(last, run_urls)]


def run_curves(run: storage.Place, name: str) -> RunCurves:
    rows = metrics_table(run)
    results = []
    for data in ChangedFiles(storage.join(run, "eval")).changed().values():
        try:
            result = json.loads(data)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and isinstance(result.get("step"), int):
            results.append(result)
    results.sort(key=lambda r: r["step"])
    if not rows and not results:
        raise FileNotFoundError(f"{run}: no metrics or evaluation results here")
    return RunCurves(
        name=name,
        steps=[float(r["step"]) for r in rows],
        loss=[_number(r.get("loss")) for r in rows],
        lr=[_number(r.get("lr")) for r in rows],
        eval_steps=[float(r["step"]) for r in results],
        heldout_loss=[heldout_loss(r) for r in results],
    )


def load_runs(runs: list[storage.Place]) -> list[RunCurves]:
    return [run_curves(run, name) for run, name in zip(runs, run_names(runs))]


def terminal_charts(runs: list[RunCurves], width: int, height: int = CHART_HEIGHT) -> RenderableType:
    """One chart per curve, every run a line in it."""
    titles = list(runs[0].panels())
    return Group(*(lines_chart({r.name: r.panels()[title] for r in runs}, title, width, height) for title in titles))


def write_png(runs: list[RunCurves], path: storage.Place) -> None:
    """The same charts side by side in a PNG at ``path`` (a local path or any fsspec URL)."""
    import io

    from matplotlib.figure import Figure  # drawn without pyplot: no display is looked for

    titles = list(runs[0].panels())
    figure = Figure(figsize=(5 * len(titles), 4), layout="constrained")
    axes = figure.subplots(1, len(titles))
    for ax, title in zip(axes, titles):
        for run in runs:
            xs, ys = run.panels()[title]
            ax.plot(xs, ys, label=run.name, marker="o" if len(xs) < 20 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    axes[0].legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    storage.write_bytes(path, buffer.getvalue())
