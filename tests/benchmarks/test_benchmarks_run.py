"""Every benchmark runs at a tiny size (``--tiny``): its code path only, so that a refactor cannot break one unnoticed.

Nothing about speed is asserted here; the benchmarks print their ratios when run at full size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(name: str, *args: str, timeout: int = 900) -> str:
    """Run ``benchmarks/NAME --tiny ARGS``; its output, after checking that it ended well."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), "--tiny", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_the_train_step_benchmark_compares_each_zero_stage_with_the_bare_loop():
    out = bench("bench_train_step.py")
    for stage in (0, 1, 2):
        assert f"kiln ZeRO-{stage} step" in out and "ratio kiln/bare" in out


@pytest.mark.slow
def test_the_train_step_benchmark_times_sequence_and_tensor_splits_against_zero1_on_two_ranks():
    out = bench("bench_train_step.py", "--split-ranks")
    for name in ("ZeRO-1", "SP=2", "TP=2"):
        assert f"kiln {name:<6} step" in out and "ratio to ZeRO-1" in out


def test_the_records_benchmark_measures_local_and_object_store_writes():
    out = bench("bench_records.py")
    assert "log_metrics:" in out and "rows on S3 (moto)" in out


def test_the_checkpoint_benchmark_saves_locally_and_to_object_storage():
    out = bench("bench_checkpoint.py")
    assert "local: synchronous save" in out and "s3: synchronous save" in out


@pytest.mark.slow
def test_the_prepare_and_read_benchmarks_run_on_a_tiny_corpus(tmp_path):
    out = bench("bench_prepare.py", "--work", str(tmp_path))
    assert "kiln prepare, the whole command" in out
    out = bench("bench_read.py", str(tmp_path / "data-given"), "--work", str(tmp_path / "read"))
    kiln_rows = [line for line in out.splitlines() if line.lstrip().startswith("kiln-")]
    assert kiln_rows and not any("error" in line or "missing" in line for line in kiln_rows), out
