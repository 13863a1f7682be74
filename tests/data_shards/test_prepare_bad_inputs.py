"""`kiln prepare` (and `kiln run`, which prepares first) on bad inputs and outputs: one line naming the file
or URL, exit 2, nothing committed."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def kiln_prepare(tmp_path: Path, data: dict, env: dict | None = None, command: str = "prepare") -> subprocess.CompletedProcess:
    tree = {
        "run": {"name": "t", "dir": str(tmp_path / "run")},
        "data": {
            "output": str(tmp_path / "data"),
            "vocab_size": 300,
            "tokenizer_sample_mb": 1,
            "tokenizer_threads": 1,
            **data,
        },
        "cluster": {"num_cpus": 1},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", command, str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kiln: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def committed(data: Path) -> list[str]:
    return [str(p) for p in data.rglob("manifest.json")] if data.exists() else []


def test_a_truncated_jsonl_gz_is_one_line_naming_it(tmp_path, kit):
    good = kit.write_jsonl_gz(tmp_path / "in" / "good.jsonl.gz", [{"text": f"document {i} " * 40} for i in range(400)])
    raw = good.read_bytes()
    truncated = tmp_path / "in" / "cut.jsonl.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    line = one_error_line(kiln_prepare(tmp_path, {"inputs": [str(truncated)], "val_inputs": [str(good)]}))
    assert f"input {truncated} is truncated or corrupt" in line
    assert committed(tmp_path / "data") == []


@pytest.mark.parametrize("command", ["prepare", "run"])
def test_an_output_url_with_an_unknown_scheme_is_one_line(tmp_path, kit, command):
    good = kit.write_jsonl_gz(tmp_path / "in" / "good.jsonl.gz", [{"text": "some text"}])
    line = one_error_line(kiln_prepare(tmp_path, {"inputs": [str(good)], "output": "nosuch://bucket/data"}, command=command))
    assert "data.output: nosuch://bucket/data has an unknown scheme" in line


@pytest.mark.parametrize("command", ["prepare", "run"])
def test_an_s3_output_without_a_reachable_store_is_one_line(tmp_path, kit, command):
    good = kit.write_jsonl_gz(tmp_path / "in" / "good.jsonl.gz", [{"text": "some text"}])
    with socket.socket() as held:  # bound but not listening: connections to it are refused
        held.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{held.getsockname()[1]}"
        env = {
            "AWS_ENDPOINT_URL": nobody,
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        line = one_error_line(
            kiln_prepare(tmp_path, {"inputs": [str(good)], "output": "s3://kiln-nowhere/data"}, env, command=command)
        )
    assert "data.output: cannot reach s3://kiln-nowhere/data" in line and "AWS_ENDPOINT_URL" in line
