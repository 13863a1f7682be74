"""Seconds from `kiln submit` to the first training step on a token-authenticated Ray head on this
machine, next to `kiln run` on the same config locally (torchrun), in the same run.

Both start from committed data (prepare is skipped by both) and a fresh run folder; the clock
stops when rank 0 records step 1.  Prints both figures and their ratio.

    .venv/bin/python benchmarks/bench_submit.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from launch.corpus import write_corpus  # noqa: E402
from ops.records import RunRecords  # noqa: E402
from support.ray_head import RayHead  # noqa: E402


def kiln(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "launch.cli", *args]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seconds_to_first_step(start_command, run_dir: str) -> float:
    started = time.perf_counter()
    proc = start_command()
    try:
        while not RunRecords(run_dir).metrics():
            if proc.poll() not in (None, 0):
                raise RuntimeError(f"the command failed with exit code {proc.returncode}")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    if args.tiny:  # the model and run are tiny already: one round
        args.repeats = 1
    with tempfile.TemporaryDirectory(prefix="kiln-bench-submit-") as tmp:
        write_corpus(f"{tmp}/corpus", max_chars=400_000)
        config = {
            "run": {"name": "bench", "dir": f"{tmp}/run", "seed": 1},
            "data": {
                "inputs": [f"{tmp}/corpus/train-*.jsonl.gz"],
                "val_inputs": [f"{tmp}/corpus/val-*.jsonl.gz"],
                "output": f"{tmp}/data",
                "vocab_size": 400,
                "shard_mb": 0.05,
            },
            "model": {"dim": 32, "layers": 2, "heads": 2, "seq_len": 32},
            "train": {"steps": 3, "micro_batch": 2, "global_batch": 4, "nproc": 2, "checkpoint_every": 100},
            "eval": {"max_windows_per_shard": 2},
            "cluster": {"num_cpus": 2},
        }
        path = f"{tmp}/config.yaml"
        Path(path).write_text(yaml.safe_dump(config))
        kiln("prepare", path)
        local, submitted = [], []
        with RayHead(num_cpus=2) as head:
            env = dict(os.environ, RAY_AUTH_TOKEN_PATH=head.token_path, RAY_AUTH_MODE="token")
            for i in range(args.repeats):
                run = f"{tmp}/local-{i}"
                local.append(seconds_to_first_step(lambda: kiln("run", path, f"run.dir={run}", wait=False), run))
                run = f"{tmp}/ray-{i}"
                submitted.append(
                    seconds_to_first_step(
                        lambda: kiln(
                            "submit",
                            path,
                            f"run.dir={run}",
                            "train.launcher=ray",
                            "--address",
                            head.dashboard_url,
                            "--follow",
                            env=env,
                            wait=False,
                        ),
                        run,
                    )
                )
    best_local, best_submit = min(local), min(submitted)
    print(f"kiln run (local torchrun) → first step: {best_local:6.1f} s   (runs: {', '.join(f'{s:.1f}' for s in local)})")
    print(f"kiln submit (Ray Train)  → first step: {best_submit:6.1f} s   (runs: {', '.join(f'{s:.1f}' for s in submitted)})")
    print(f"ratio submit ÷ local: {best_submit / best_local:.2f}")


if __name__ == "__main__":
    main()
