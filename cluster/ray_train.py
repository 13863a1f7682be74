"""The Ray launcher: ``train.nproc`` ranks as Ray Train workers, each running the same per-rank loop.

Ray Train places the workers, sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
and the torch process group; ``llm.worker.run_training`` then builds its DeepSpeed
engine on that group.  A failed attempt is retried up to ``train.max_restarts`` times
and resumes from the last committed checkpoint, exactly as under the local launcher.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from llm.job import TrainJob
from llm.worker import REQUEUE_EXIT_CODE
from ops.records import RunRecords


def _rank_main(config: dict) -> None:
    """Body of one Ray Train worker: the per-rank loop; a non-zero exit is a failure Ray Train retries."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(int(config["threads_per_rank"]))
    from llm.worker import run_training

    rc = run_training(TrainJob.model_validate(config["job"]))
    if rc not in (0, REQUEUE_EXIT_CODE):
        raise RuntimeError(f"rank exited with code {rc}")


def launch_ray(job: TrainJob) -> int:
    """Run the job's ranks on the connected Ray cluster; return 0, or 75 when the ranks saved for a preemption."""
    use_gpu = torch.cuda.is_available()
    nproc = job.train.nproc
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kiln-ray-train-") as results:
        trainer = TorchTrainer(
            _rank_main,
            train_loop_config={
                "job": job.model_dump(mode="json"),
                "threads_per_rank": max(1, (os.cpu_count() or 1) // nproc),
            },
            scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name="kiln",
                storage_path=results,
                failure_config=FailureConfig(max_failures=job.train.max_restarts),
            ),
        )
        trainer.fit()
    return REQUEUE_EXIT_CODE if RunRecords(job.run_dir, job.storage_options).preempted_since(started) else 0
