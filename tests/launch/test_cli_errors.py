"""Bad input reaches the user as one line on stderr and exit code 2, never a traceback."""

import gzip
import json
import subprocess
import sys

import pytest
import yaml


def kiln(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def write_config(tmp_path, **data):
    tree = {
        "run": {"name": "t", "dir": str(tmp_path / "run")},
        "data": {"output": str(tmp_path / "data"), "vocab_size": 300, **data},
        "cluster": {"num_cpus": 1},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("kiln: error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_config_typo_is_one_line_with_a_suggestion(tmp_path):
    proc = kiln("prepare", write_config(tmp_path, inputs=["x.jsonl"]), "train.chekpoint_every=5", cwd=tmp_path)
    assert_one_line_error(proc, "train.chekpoint_every", "train.checkpoint_every")


@pytest.mark.slow
def test_missing_input_file_is_one_line_naming_it(tmp_path):
    proc = kiln("prepare", write_config(tmp_path, inputs=[str(tmp_path / "missing-*.jsonl.gz")]), cwd=tmp_path)
    assert_one_line_error(proc, "missing-*.jsonl.gz")


@pytest.mark.slow
def test_empty_corpus_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl.gz"
    with gzip.open(empty, "wt") as f:
        f.write(json.dumps({"id": "a", "text": ""}) + "\n")
    proc = kiln("prepare", write_config(tmp_path, inputs=[str(empty)], val_inputs=[str(empty)]), cwd=tmp_path)
    assert_one_line_error(proc, "empty")


def test_train_before_prepare_says_what_to_run(tmp_path):
    proc = kiln("train", write_config(tmp_path, inputs=["x.jsonl"]), cwd=tmp_path)
    assert_one_line_error(proc, "kiln prepare")
