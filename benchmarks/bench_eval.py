"""Eval throughput with 2 Ray workers ÷ 1 worker: the same checkpoint, the same tasks, one run.

    .venv/bin/python benchmarks/bench_eval.py [--rounds 3 --windows 96 --examples 96]

The first call prepares a small corpus (this Python's standard-library sources), trains
one step of a 4-layer, 256-wide model with `kiln train` and writes a cloze task under
``.cache/bench/eval/``; later calls reuse them.  A private Ray with 3 logical CPUs holds
both pools at once (a pool that waits uses no CPU; the machine's cores are what the
pools share).  Each pool first evaluates the step once, which loads the checkpoint into
every worker and counts the train shards; then the pools take turns, round by round in
alternating order, evaluating the held-out task and the cloze task.  Tokens are the
target tokens of the held-out windows plus the scored tokens of every choice.  Prints
each round's ratio, the median, and the load average around the measurement, since
other work on a shared machine takes cores from the 2-worker pool.  Target: ratio >= 1.8.

Beside the wall-clock ratio it prints one from the workers' CPU time (psutil): the
1-worker pool's CPU seconds over the busier of the 2-worker pool's two workers.  That is
the speedup two free cores would give; other jobs on the machine barely move it, while
an uneven split of the slices or work done twice would show in it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / ".cache" / "bench" / "eval"


def kiln(root: Path, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"kiln {args[0]} failed:\n{proc.stderr[-3000:]}")


# Sizes of the benchmark, and of --tiny (the code path only).
FULL = {
    "corpus_chars": 2_000_000,
    "vocab": 4096,
    "shard_mb": 1,
    "model": {"dim": 256, "layers": 4, "heads": 4, "seq_len": 256},
    "cloze": {"context_tokens": 96, "continuation_tokens": 12},
}
TINY = {
    "corpus_chars": 2_000_000,  # whole stdlib files: enough held-out ones for a four-choice cloze
    "vocab": 400,
    "shard_mb": 0.05,
    "model": {"dim": 32, "layers": 1, "heads": 2, "seq_len": 32},
    "cloze": {"context_tokens": 16, "continuation_tokens": 4},
}


def setup(root: Path, size: dict) -> Path:
    """Data, a one-step checkpoint and a cloze task (made once, then reused)."""
    from launch.corpus import write_corpus
    from cluster.evals.cloze import write_cloze

    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yaml"
    if not (root / "run" / "checkpoints" / "latest").exists():
        write_corpus(str(root / "corpus"), max_chars=size["corpus_chars"])
        config.write_text(
            yaml.safe_dump(
                {
                    "run": {"name": "bench-eval", "dir": str(root / "run"), "seed": 1},
                    "data": {
                        "inputs": [str(root / "corpus" / "train-*.jsonl.gz")],
                        "val_inputs": [str(root / "corpus" / "val-*.jsonl.gz")],
                        "output": str(root / "data"),
                        "vocab_size": size["vocab"],
                        "shard_mb": size["shard_mb"],
                    },
                    "model": size["model"],
                    "train": {
                        "steps": 1,
                        "micro_batch": 2,
                        "global_batch": 2,
                        "nproc": 1,
                        "checkpoint_every": 1,
                        "warmup_steps": 0,
                    },
                    "cluster": {"num_cpus": 2},
                }
            )
        )
        kiln(root, "prepare", str(config))
        kiln(root, "train", str(config))
    if not (root / "cloze.jsonl").exists():
        write_cloze(str(root / "data"), str(root / "cloze.jsonl"), n=400, **size["cloze"])
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=96, help="held-out windows (cap per val shard)")
    parser.add_argument("--examples", type=int, default=96, help="cloze examples")
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    if args.tiny:
        args.rounds, args.windows, args.examples = 1, 4, 4
        tiny_root = tempfile.mkdtemp(prefix="kiln-bench-eval-")
    root = Path(tiny_root) if args.tiny else ROOT
    try:
        measure(args, root, setup(root, TINY if args.tiny else FULL))
    finally:
        if args.tiny:
            shutil.rmtree(tiny_root, ignore_errors=True)


def measure(args: argparse.Namespace, root: Path, config: Path) -> None:
    import psutil
    import ray

    from cluster.evals.driver import EvalJob, build_tasks, plan_step, plan_steps
    from launch.config import load_config

    cfg = load_config(
        str(config),
        [
            f"eval.max_windows_per_shard={args.windows}",
            "eval.slice_size=8",
            f"eval.tasks=[{{name: cloze, type: multiple_choice, path: {root / 'cloze.jsonl'}, limit: {args.examples}}}]",
        ],
    )
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ray_tmp = tempfile.mkdtemp(prefix="kray-")
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        _temp_dir=ray_tmp,
    )
    try:
        tasks = build_tasks(cfg.eval, cfg.data_url)
        [step] = plan_steps(cfg.run_url, cfg.eval)
        plan = plan_step(cfg.run_url, step, tasks, cfg.eval.slice_size)
        jobs = {w: EvalJob(cfg.run_url, tasks, cfg.eval.model_copy(update={"workers": w})) for w in (1, 2)}
        for job in jobs.values():
            job.evaluate(plan)  # warm: the checkpoint loaded in every worker, the train shards counted
        tokens = sum(r.values()["tokens"] for r in jobs[1].evaluate(plan).results)
        workers = {w: [psutil.Process(pid) for pid in job.pool.pids()] for w, job in jobs.items()}
        load_before = os.getloadavg()
        rates: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, list[float]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for w in (1, 2) if round_ % 2 == 0 else (2, 1):
                cpu_before = [sum(p.cpu_times()[:2]) for p in workers[w]]
                started = time.perf_counter()
                jobs[w].evaluate(plan)
                rates[w].append(tokens / (time.perf_counter() - started))
                cpu[w].append(max(sum(p.cpu_times()[:2]) - b for p, b in zip(workers[w], cpu_before)))
        load_after = os.getloadavg()
        for job in jobs.values():
            job.pool.close()
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    ratios = [two / one for one, two in zip(rates[1], rates[2])]
    print(
        f"eval tokens per pass: {tokens:,} ({args.windows} held-out windows of 256 + {args.examples} cloze examples "
        f"x 4 choices), slices of 8, {os.cpu_count()} cores"
    )
    for w in (1, 2):
        print(f"{w} worker{'s' if w > 1 else ' '}: " + "  ".join(f"{r:,.0f}" for r in rates[w]) + " tokens/s")
    print("ratio per round: " + "  ".join(f"{r:.2f}" for r in ratios))
    print(
        f"2 workers / 1 worker: {statistics.median(ratios):.2f} (median of {len(ratios)}; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 1.8)"
    )
    cpu_ratios = [one / two for one, two in zip(cpu[1], cpu[2])]
    print(
        f"by the workers' CPU time: {statistics.median(cpu_ratios):.2f} (median; per round "
        + "  ".join(f"{r:.2f}" for r in cpu_ratios)
        + ")"
    )
    print(f"load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
