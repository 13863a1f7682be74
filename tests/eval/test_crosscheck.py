"""kiln eval against tools we did not write, on the Hugging Face export of the same checkpoint.

Both tools run in a Python that has neither ``sentencepiece`` nor ``protobuf`` (the export's
tokenizer.json is all they get), offline.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_shards.loader import eval_windows
from data_shards.tokenizer import Tokenizer
from llm.checkpoint import load_model
from cluster.evals.likelihood import continuation_logprobs
from llm.export_hf import export_hf
from cluster.evals.tasks.base import TaskInputs
from cluster.evals.tasks.multiple_choice import MultipleChoiceEntry, MultipleChoiceTask
from ops import storage
from ops.storage import Location

pytestmark = pytest.mark.slow

WITHOUT = ("sentencepiece", "google.protobuf")
WINDOWS = 96  # held-out windows scored by both


@pytest.fixture(scope="module")
def python_without_sentencepiece_and_protobuf(tmp_path_factory):
    """A `python` command whose import path is this venv's site-packages less sentencepiece and protobuf."""
    import site

    packages = Path(next(p for p in site.getsitepackages() if p.endswith("site-packages")))
    root = tmp_path_factory.mktemp("site-without")
    for entry in packages.iterdir():
        name = entry.name
        if name.endswith(".pth") or name.startswith(("sentencepiece", "protobuf-")):
            continue
        if name == "google":
            (root / "google").mkdir()
            for child in entry.iterdir():
                if child.name not in ("protobuf", "_upb"):
                    (root / "google" / child.name).symlink_to(child)
            continue
        (root / name).symlink_to(entry)
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(root.parent / "hf-home"),
        "TOKENIZERS_PARALLELISM": "false",
    }

    def run(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def exported(trained_run, kiln_cli, tmp_path_factory):
    """`kiln eval` of step 6 (held-out and the cloze task) and the HF export of the same step."""
    folder = tmp_path_factory.mktemp("crosscheck")
    proc = kiln_cli(
        "eval",
        str(trained_run.config),
        "eval.steps=[6]",
        "eval.slice_size=64",
        f"eval.max_windows_per_shard={WINDOWS}",
        f"eval.tasks=[{{name: cloze, type: multiple_choice, path: {trained_run.cloze}}}]",
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = storage.read_json(os.path.join(trained_run.run_url, "eval", "step-00000006.json"))
    out = folder / "hf"
    assert export_hf(trained_run.run_url, str(out), step=6) == 6
    return result, out, folder


PROBE = """
import importlib.util, json, sys
for name in {without!r}:
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    assert found is None, name + " is importable"
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, texts_path, windows_path = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
windows = torch.tensor(json.load(open(windows_path)))
nll = 0.0
with torch.no_grad():
    for window in windows:
        logits = model(input_ids=window[None, :-1]).logits[0].double()
        nll += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
texts = json.load(open(texts_path))
print(json.dumps({{"tokenizer": type(tokenizer).__name__, "ids": [tokenizer(t)["input_ids"] for t in texts],
                  "loss": nll / (windows.shape[0] * (windows.shape[1] - 1))}}))
"""


def test_transformers_alone_loads_the_export_encodes_as_kiln_and_scores_the_held_out_loss_to_1e5(
    trained_run, exported, python_without_sentencepiece_and_protobuf
):
    result, out, folder = exported
    kiln_tokenizer = Tokenizer.load(trained_run.data_url)
    texts = [kiln_tokenizer.decode(doc) for doc in eval_windows(trained_run.data_url, "val", 0, 400)[:5]]
    texts += ["    def f(x):\n\treturn  x ** 2  # ünïcödé ✓", "a literal </s> in text", "   "]
    windows = eval_windows(trained_run.data_url, "val", 0, 32)[:WINDOWS]
    (folder / "texts.json").write_text(json.dumps(texts))
    (folder / "windows.json").write_text(json.dumps(windows.tolist()))
    script = folder / "probe.py"
    script.write_text(PROBE.format(without=WITHOUT))
    proc = python_without_sentencepiece_and_protobuf(
        [str(script), str(out), str(folder / "texts.json"), str(folder / "windows.json")], cwd=folder
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["ids"] == [kiln_tokenizer.encode(t) for t in texts]
    assert result["tokens"] == windows.shape[0] * 32  # the same windows
    assert abs(probe["loss"] - result["loss"]) <= 1e-5


TASK_YAML = """task: kiln_cloze
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def kiln_choice_scores(run, cloze_path: str) -> list[list[float]]:
    _, model = load_model(run.run_url, 6)
    inputs = TaskInputs(data=Location(run.data_url), tokenizer=Tokenizer.load(run.data_url), batch_size=4)
    task = MultipleChoiceTask.build(MultipleChoiceEntry(name="c", type="multiple_choice", path=cloze_path), inputs)
    return [continuation_logprobs(model, [(e.context, c) for c in e.continuations]) for e in task.examples]


def test_lm_evaluation_harness_scores_the_export_as_kiln_eval_scores_the_checkpoint(
    trained_run, exported, python_without_sentencepiece_and_protobuf
):
    result, out, folder = exported
    tasks = folder / "lm-eval-tasks"
    tasks.mkdir()
    (tasks / "kiln_cloze.yaml").write_text(TASK_YAML.format(path=trained_run.cloze))
    proc = python_without_sentencepiece_and_protobuf(
        [
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={out},dtype=float32",
            "--tasks",
            "kiln_cloze",
            "--include_path",
            str(tasks),
            "--device",
            "cpu",
            "--output_path",
            str(folder / "lm-eval-out"),
            "--log_samples",
        ],
        cwd=folder,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [results_file] = (folder / "lm-eval-out").rglob("results_*.json")
    harness = json.loads(results_file.read_text())["results"]["kiln_cloze"]
    cloze = result["tasks"]["cloze"]
    n = cloze["examples"]
    assert round(harness["acc,none"] * n) == cloze["correct"]
    assert round(harness["acc_norm,none"] * n) == cloze["correct_norm"]
    assert harness["acc,none"] == pytest.approx(cloze["acc"], abs=1e-12)
    assert harness["acc_norm,none"] == pytest.approx(cloze["acc_norm"], abs=1e-12)

    [samples_file] = (folder / "lm-eval-out").rglob("samples_kiln_cloze_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    theirs = [[float(resp[0]) for resp in s["filtered_resps"]] for s in samples]
    ours = kiln_choice_scores(trained_run, trained_run.cloze)
    assert len(theirs) == len(ours) == n
    np.testing.assert_allclose(np.concatenate(theirs), np.concatenate(ours), atol=1e-4)
