"""The task interface and what fans it out, as pure functions: tallies, reports, steps, workers, config."""

import numpy as np
import pytest

from data_shards.errors import DataError
from ops import storage

from cluster.evals.config import EvalConfig
from cluster.evals.driver import run_finished, steps_to_evaluate
from cluster.evals.report import EvalReport, read_report, report_url, write_report
from cluster.evals.pool import device_and_dtype, worker_plan
from cluster.evals.tasks import TASK_TYPES
from cluster.evals.tasks.base import Metric, Tally, TaskResult
from cluster.evals.tasks.heldout import HeldOutEntry, HeldOutTally
from cluster.evals.tasks.multiple_choice import MultipleChoiceEntry, MultipleChoiceTally


def test_tallies_of_disjoint_slices_add_field_by_field_and_an_empty_array_counts_as_zeros():
    a = HeldOutTally(examples=2, tokens=10, nll=3.5, bytes=40, target_counts=np.array([1, 2, 3]))
    b = HeldOutTally(
        examples=1, tokens=5, nll=1.0, bytes=9, target_counts=np.array([0, 1, 0]), train_counts=np.array([5, 5, 5])
    )
    total = HeldOutTally() + a + b
    assert (total.examples, total.tokens, total.nll, total.bytes) == (3, 15, 4.5, 49)
    np.testing.assert_array_equal(total.target_counts, [1, 3, 3])
    np.testing.assert_array_equal(total.train_counts, [5, 5, 5])


def test_tallies_of_different_tasks_do_not_add():
    with pytest.raises(TypeError):
        HeldOutTally() + MultipleChoiceTally()


def test_every_task_module_is_a_task_type_with_its_own_config_entry():
    assert TASK_TYPES["heldout"].entry is HeldOutEntry
    assert TASK_TYPES["multiple_choice"].entry is MultipleChoiceEntry
    cfg = EvalConfig.model_validate({"tasks": [{"name": "cloze", "type": "multiple_choice", "path": "c.jsonl"}]})
    assert isinstance(cfg.tasks[0], MultipleChoiceEntry)


def test_held_out_task_runs_first_unless_switched_off():
    tasks = [{"name": "cloze", "type": "multiple_choice", "path": "c.jsonl"}]
    assert [e.name for e in EvalConfig.model_validate({"tasks": tasks}).task_entries()] == ["heldout", "cloze"]
    off = EvalConfig.model_validate({"tasks": tasks, "heldout": False})
    assert [e.name for e in off.task_entries()] == ["cloze"]
    capped = EvalConfig(max_windows_per_shard=5).task_entries()[0]
    assert isinstance(capped, HeldOutEntry) and capped.max_windows_per_shard == 5


def test_eval_step_is_an_unknown_key_that_suggests_steps(tmp_path):
    from launch.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("data: {inputs: [a.jsonl], output: d}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'eval.step' — did you mean 'eval.steps'\?"):
        load_config(str(path), ["eval.step=300"])


def test_two_tasks_with_one_name_are_rejected():
    with pytest.raises(ValueError, match="task name 'heldout' is used twice"):
        EvalConfig.model_validate({"tasks": [{"name": "heldout", "type": "multiple_choice", "path": "c.jsonl"}]})


def test_misspelled_key_of_a_task_entry_suggests_the_right_one(tmp_path):
    from launch.config import ConfigError, load_config

    path = tmp_path / "config.yaml"
    path.write_text("data: {inputs: [a.jsonl], output: d}\neval:\n  tasks:\n    - {name: c, type: multiple_choice, pth: x}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'eval.tasks.0.pth' — did you mean 'eval.tasks.0.path'\?"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"eval.steps: .*'latest' or 'all'.*'newest'"):
        load_config(str(path), ["eval.tasks=[]", "eval.steps=newest"])


def test_steps_latest_all_or_a_list_and_a_missing_step_is_named():
    assert steps_to_evaluate("latest", [3, 6, 9], 9, "run/checkpoints") == [9]
    assert steps_to_evaluate("latest", [3, 6, 9], 6, "run/checkpoints") == [6]
    assert steps_to_evaluate("all", [3, 6, 9], 9, "run/checkpoints") == [3, 6, 9]
    assert steps_to_evaluate([9, 3, 9], [3, 6, 9], 9, "run/checkpoints") == [3, 9]
    with pytest.raises(
        FileNotFoundError,
        match=r"eval.steps: step 4 has no committed checkpoint in run/checkpoints "
        r"\(committed: 3, 6, 9\)",
    ):
        steps_to_evaluate([3, 4], [3, 6, 9], 9, "run/checkpoints")
    with pytest.raises(FileNotFoundError, match="run/checkpoints holds no committed checkpoint"):
        steps_to_evaluate("latest", [], None, "run/checkpoints")


def test_a_run_ends_when_its_last_start_is_followed_by_a_finish_or_by_its_launcher_giving_up():
    assert not run_finished([])
    assert not run_finished([{"event": "start"}, {"event": "checkpoint", "step": 3}])
    assert run_finished([{"event": "start"}, {"event": "checkpoint"}, {"event": "finish"}])
    assert not run_finished([{"event": "start"}, {"event": "finish"}, {"event": "start"}])  # trained further
    # a rank's failure may be restarted; the launcher's failure is the end of the run
    assert not run_finished([{"event": "start"}, {"event": "failure", "rank": 1, "error": "boom"}])
    assert run_finished([{"event": "start"}, {"event": "failure", "launcher": "local", "exit_code": 1}])


def test_workers_take_a_gpu_each_where_the_cluster_has_them_else_a_cpu_each():
    gpu = worker_plan({"CPU": 32, "GPU": 8}, None)
    assert (gpu.count, gpu.num_gpus, gpu.num_cpus) == (8, 1, 1)
    assert worker_plan({"CPU": 32, "GPU": 8}, 2).count == 2
    cpu = worker_plan({"CPU": 2}, None)
    assert (cpu.count, cpu.num_gpus) == (2, 0)
    assert worker_plan({"CPU": 2}, 5).count == 2  # never more workers than the cluster can place
    assert device_and_dtype(True) == ("cuda", "bfloat16")
    assert device_and_dtype(False) == ("cpu", "float32")


def report() -> EvalReport:
    return EvalReport(
        step=6,
        results=[
            TaskResult(
                name="heldout",
                type="heldout",
                metrics=[
                    Metric(key="loss", label="loss (nats/token)", value=2.5),
                    Metric(key="tokens", label="t", value=64, format=",d"),
                    Metric(key="examples", label="windows", value=2, format=",d"),
                ],
            ),
            TaskResult(
                name="cloze",
                type="multiple_choice",
                metrics=[
                    Metric(key="acc", label="accuracy", value=0.5),
                    Metric(key="acc_norm", label="a", value=0.25),
                    Metric(key="examples", label="examples", value=4, format=",d"),
                ],
            ),
        ],
    )


def test_report_keeps_held_out_keys_at_the_top_and_every_task_under_tasks():
    doc = report().to_json()
    assert doc["step"] == 6 and doc["loss"] == 2.5 and doc["tokens"] == 64
    assert doc["tasks"]["cloze"] == {"acc": 0.5, "acc_norm": 0.25, "examples": 4}
    assert doc["tasks"]["heldout"]["loss"] == 2.5
    assert doc["display"]["cloze"]["type"] == "multiple_choice"
    assert doc["display"]["heldout"]["metrics"][1] == {"key": "tokens", "label": "t", "format": ",d"}
    assert "acc" not in doc  # only the held-out task's values sit at the top level


def test_report_reads_back_from_its_json():
    import json

    again = EvalReport.from_json(json.loads(json.dumps(report().to_json())))
    assert again == report()


def test_a_report_file_is_written_and_read_back_through_its_typed_format(tmp_path):
    write_report(str(tmp_path), report())
    again = read_report(str(tmp_path), 6)
    assert again.step == 6
    assert sorted(again.results, key=lambda r: r.name) == sorted(report().results, key=lambda r: r.name)  # keys sorted
    assert read_report(str(tmp_path), 7) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda doc: doc.update(stpe=6), r"unknown key 'stpe' — did you mean 'step'\?"),
        (
            lambda doc: doc["display"]["cloze"]["metrics"][0].update(lable="x"),
            r"unknown key 'display.cloze.metrics.0.lable' — did you mean 'display.cloze.metrics.0.label'\?",
        ),
        (lambda doc: doc["tasks"]["cloze"].pop("acc"), r"display.cloze shows 'acc', which tasks.cloze does not hold"),
        (lambda doc: doc["tasks"].pop("cloze"), r"tasks \(heldout\) and display \(cloze, heldout\) name different tasks"),
    ],
)
def test_a_report_file_that_is_not_one_names_the_file_and_the_key(tmp_path, change, message):
    doc = report().to_json()
    change(doc)
    storage.write_json(report_url(str(tmp_path), 6), doc)
    with pytest.raises(DataError, match=rf"step-00000006.json is not an evaluation report: {message}"):
        read_report(str(tmp_path), 6)


def test_results_table_prints_whatever_the_tasks_return():
    from rich.console import Console

    from cluster.evals.display import eval_table

    console = Console(width=120, record=True)
    console.print(eval_table(report(), "runs/x"))
    text = console.export_text()
    assert "step 6" in text and "heldout" in text and "cloze" in text
    assert "accuracy" in text and "0.5000" in text and "2.5000" in text
    assert Metric(key="n", label="n", value=12345, format=",d").formatted() == "12,345"


def test_a_tally_starts_from_zero():
    assert Tally() + Tally(examples=2, tokens=3) == Tally(examples=2, tokens=3)
