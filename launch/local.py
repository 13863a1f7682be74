"""The local launcher: ``train.nproc`` ranks on this machine through torchrun, restarted on failure.

Each attempt is one torchrun; a failed attempt is retried up to ``train.max_restarts``
times and resumes from the last committed checkpoint.  SIGTERM/SIGINT reach the ranks
through torchrun, which lets them save and exit; the launcher then reports
"requeue me" (exit 75) instead of retrying.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llm.checkpoint import latest_committed_step
from llm.job import TrainJob
from llm.worker import REQUEUE_EXIT_CODE
from ops.records import MetricsFollower, RunRecords

POLL_S = 1.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_environment(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for CPU-or-GPU ranks: gloo on CPU, threads split between ranks."""
    env = dict(os.environ if base is None else base)
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # DeepSpeed's own deprecated torch calls would otherwise warn once per rank.
    env.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
    return env


def training_progress() -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} · {task.fields[tokens_per_s]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def wait_with_progress(proc: subprocess.Popen, job: TrainJob) -> int:
    """Wait for torchrun while showing the steps, loss and throughput that rank 0 records."""
    follower = MetricsFollower(job.run_dir, job.storage_options)
    follower.new_rows()  # rows of earlier attempts are history, not progress
    start = latest_committed_step(job.run_dir, job.storage_options) or 0
    with training_progress() as progress:
        task = progress.add_task("train", total=job.train.steps, completed=start, loss="—", tokens_per_s="—")
        while True:
            rc = proc.poll()
            for row in follower.new_rows():
                progress.update(
                    task,
                    completed=row.get("step", start),
                    loss=f"{row['loss']:.4f}" if row.get("loss") is not None else "—",
                    tokens_per_s=f"{row['tokens_per_s']:,.0f}" if row.get("tokens_per_s") else "—",
                )
            if rc is not None:
                return rc
            time.sleep(POLL_S)


def external_rank_environment(environ: dict[str, str]) -> dict[str, str]:
    """Variables to add so that a rank started by someone else (``train.launcher=none``) finds its place.

    torchrun-style variables win; otherwise SLURM's srun task variables are translated (the
    batch script exports MASTER_ADDR/MASTER_PORT); otherwise this is a single process on 127.0.0.1.
    """
    if "RANK" in environ:
        return {}
    if "SLURM_PROCID" in environ:
        return {
            "RANK": environ["SLURM_PROCID"],
            "WORLD_SIZE": environ.get("SLURM_NTASKS", "1"),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        }
    return {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}


def torchrun_command(job_path: str, nproc: int) -> list[str]:
    """torchrun for ``nproc`` ranks on this machine; ``--standalone`` makes torchrun bind its own
    free rendezvous port, so launches side by side cannot race for one."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone",
        "--nproc_per_node", str(nproc),
        "-m", "llm.worker", job_path,
    ]


def launch_local(job: TrainJob) -> int:
    """Run the job's ranks until done, failed past ``max_restarts``, or preempted; return the exit code."""
    nproc = job.train.nproc
    records = RunRecords(job.run_dir, job.storage_options)
    with tempfile.TemporaryDirectory(prefix="kiln-job-") as tmp:
        job_path = os.path.join(tmp, "job.json")
        job.save(job_path)
        attempt = 0
        while True:
            started = time.time()
            proc = subprocess.Popen(torchrun_command(job_path, nproc), env=rank_environment(nproc))
            stop_requested = False

            def forward(signum, _frame):
                nonlocal stop_requested
                stop_requested = True
                proc.send_signal(signum)

            previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
            try:
                rc = wait_with_progress(proc, job)
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
            if rc == 0:
                return 0
            if stop_requested or rc == REQUEUE_EXIT_CODE or records.preempted_since(started):
                return REQUEUE_EXIT_CODE
            if attempt >= job.train.max_restarts:
                records.event("failure", exit_code=rc, attempts=attempt + 1)
                return rc
            attempt += 1
            records.event("restart", attempt=attempt, exit_code=rc)
