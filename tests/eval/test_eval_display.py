"""The eval table `kiln eval` and `kiln run` print: a report read back from a run folder shows its text literally."""

import pytest
from rich.console import Console

from cluster.evals.report import EvalReport
from cluster.evals.display import eval_table
from cluster.evals.tasks.base import Metric, TaskResult


@pytest.mark.parametrize("hostile", ["[red]RED[/]", "[/]", "[link=https://example.invalid]click[/link]"])
def test_task_names_and_labels_from_a_report_show_literally(hostile):
    report = EvalReport(
        step=6,
        results=[TaskResult(name=f"t{hostile}", type="custom", metrics=[Metric(key="acc", label=f"l{hostile}", value=0.5)])],
    )
    console = Console(record=True, width=300, color_system="truecolor")
    console.print(eval_table(report, f"runs/r{hostile}"))
    text = console.export_text()
    for shown in (f"t{hostile}", f"l{hostile}", f"runs/r{hostile}"):
        assert shown in text
    assert "\x1b]8;" not in console.export_text(styles=True)
