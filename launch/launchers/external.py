"""``train.launcher=none``: this process is one rank, started by someone else (srun, a hand-written torchrun).

torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) win;
otherwise SLURM's srun task variables are translated (the batch script exports
MASTER_ADDR/MASTER_PORT); otherwise this is a single rank on 127.0.0.1.  Whoever started
the rank restarts it: a failure ends this process.
"""

from __future__ import annotations

import os

from launch.launchers.base import AttemptResult, Launcher
from llm.devices import rank_environment
from llm.job import TrainJob
from llm.trainer import StopRequest, run_training

# A single rank hosts its own rendezvous; port 0 lets it bind any free port itself.
SINGLE_RANK = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}


def external_rank_environment(environ: dict[str, str]) -> dict[str, str]:
    """Variables to add so that a rank started by someone else finds its place."""
    if "RANK" in environ:
        return {}
    if "SLURM_PROCID" in environ:
        return {
            "RANK": environ["SLURM_PROCID"],
            "WORLD_SIZE": environ.get("SLURM_NTASKS", "1"),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        }
    return dict(SINGLE_RANK)


class ExternalLauncher(Launcher):
    name = "none"
    restarts_failed_attempts = False
    shows_progress = False

    def __init__(self, job: TrainJob):
        super().__init__(job)
        self.stop = StopRequest()

    def run_attempt(self, attempt: int) -> AttemptResult:
        os.environ.update(external_rank_environment(dict(os.environ)))
        os.environ.update(rank_environment(self.job.train.nproc))
        return AttemptResult(exit_code=run_training(self.job, self.stop))

    def request_stop(self, reason: str) -> None:
        self.stop.request(reason)
