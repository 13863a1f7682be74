"""`kiln prepare` (and `kiln run`, which prepares first) on bad inputs and outputs: one line naming the file
or URL, exit 2, nothing committed."""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import yaml
from support.hostile_inputs import write_gzip_bomb, write_long_json_line, write_zstd_rle_bomb
from support.token_shards import stdlib_texts


pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def kiln_prepare(tmp_path: Path, data: dict, env: dict | None = None, command: str = "prepare") -> subprocess.CompletedProcess:
    return subprocess.run(
        kiln_command(tmp_path, data, command),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def kiln_command(tmp_path: Path, data: dict, command: str = "prepare") -> list[str]:
    """The command line of ``kiln COMMAND`` on a config of ``data`` written under ``tmp_path``."""
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
    return [sys.executable, "-m", "launch.cli", command, str(config)]


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


def run_with_peak_rss(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``command`` to the end; its result and the peak of the summed resident memory of the
    process and all its descendants (the Ray processes and workers a command starts among them),
    sampled every 100 ms."""
    peak = 0
    with subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as proc:
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            root = psutil.Process(proc.pid)
            while not stop.wait(0.1):
                total = 0
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    return
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
                peak = max(peak, total)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stdout, stderr = proc.communicate(timeout=900)
        except BaseException:
            proc.kill()
            raise
        finally:
            stop.set()
            sampler.join()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), peak


GIB = 1 << 30


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


@pytest.fixture
def hostile_corpus(tmp_path):
    """Good documents, and beside them in the same files: a gzip and a zstd bomb that expand to
    10 GiB each and a JSON line nested 1,100 deep.  Returns the folder and the good train texts."""
    texts = [f"Document {i}. " + t for i, t in enumerate(stdlib_texts(80, chars=3000))]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jsonl").write_bytes(jsonl(texts[:30]))
    (folder / "val.jsonl").write_bytes(jsonl(texts[70:80]))
    write_gzip_bomb(folder / "bomb.jsonl.gz", 10 * GIB, prefix=jsonl(texts[30:40]))
    write_zstd_rle_bomb(folder / "bomb.jsonl.zst", 10 * GIB, prefix=jsonl(texts[40:50]))
    deep = '{"text": "deep", "x": ' + "[" * 1100 + "]" * 1100 + "}\n"
    (folder / "deep.jsonl").write_bytes(jsonl(texts[50:55]) + deep.encode() + jsonl(texts[55:60]))
    assert all(p.stat().st_size < 16 << 20 for p in folder.iterdir())
    return folder, texts


def test_prepare_keeps_every_good_document_beside_bombs_and_endless_lines_in_bounded_memory(tmp_path, hostile_corpus):
    folder, texts = hostile_corpus
    long = folder / "long.jsonl"  # good documents around a 2 GiB line; removed whatever happens
    try:
        with open(long, "wb") as f:
            f.write(jsonl(texts[60:65]))
            write_long_json_line(f, 2 * GIB)
            f.write(jsonl(texts[65:70]))
            os.fsync(f.fileno())  # written back before prepare starts, not while it does
        inputs = [str(folder / n) for n in ("good.jsonl", "bomb.jsonl.gz", "bomb.jsonl.zst", "deep.jsonl", "long.jsonl")]
        data = {"inputs": inputs, "val_inputs": [str(folder / "val.jsonl")], "on_error": "skip", "vocab_size": 600}
        proc, peak = run_with_peak_rss(kiln_command(tmp_path, data), tmp_path)
    finally:
        long.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"peak RSS of kiln prepare and its process tree: {peak / 2**20:.0f} MiB")
    assert peak < 2 * GIB
    manifest = json.loads((tmp_path / "data" / "train" / "manifest.json").read_text())
    assert manifest["total_docs"] == 70  # texts[:70]: every good train document
    errors = manifest["errors"]
    assert (errors["too_long"], errors["too_deep"], errors["cut_files"]) == (3, 1, 2)


def test_prepare_stops_at_a_bomb_with_one_line_naming_file_and_line(tmp_path, hostile_corpus):
    folder, _ = hostile_corpus
    inputs = [str(folder / "good.jsonl"), str(folder / "bomb.jsonl.zst")]
    command = kiln_command(tmp_path, {"inputs": inputs, "val_inputs": [str(folder / "val.jsonl")]})
    proc, peak = run_with_peak_rss(command, tmp_path)
    line = one_error_line(proc)
    assert f"{folder / 'bomb.jsonl.zst'}:11: document over data.max_doc_bytes (8,388,608 bytes)" in line
    assert peak < 2 * GIB
    assert committed(tmp_path / "data") == []
