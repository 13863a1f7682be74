"""Eval workers: Ray actors that score slices of evaluation tasks.

A worker loads a checkpoint once, the first time it is asked for a slice of that step,
and keeps it for every later slice of the step.  Workers take a GPU each when the
cluster has GPUs (the model in bf16 there) and one CPU each otherwise (fp32).  A worker
whose process dies is restarted by Ray, and the calls it had not answered are sent to
it again, so a slice is never dropped; results come back in slice order whatever order
they finish in, so the sums built from them do not depend on scheduling.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import RayActorError, RayTaskError

from data_shards.errors import DataError
from cluster.evals.tasks.base import EvalTask, Slice, Tally
from llm.devices import use_cpu_accelerator_without_cuda
from ops.storage import Location

CALLS_IN_FLIGHT = 2  # per worker: the next slice waits on the worker while the driver takes in the last one


@dataclass(frozen=True)
class WorkerPlan:
    count: int
    num_cpus: float
    num_gpus: float


def worker_plan(resources: dict[str, float], requested: int | None) -> WorkerPlan:
    """How many workers, and what each reserves, on a cluster with these total resources."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return WorkerPlan(count=min(requested or gpus, gpus), num_cpus=1, num_gpus=1)
    cpus = max(1, int(resources.get("CPU", 1)))
    return WorkerPlan(count=min(requested or cpus, cpus), num_cpus=1, num_gpus=0)


def device_and_dtype(cuda: bool) -> tuple[str, str]:
    """Where a worker runs its model and in which precision: bf16 on a GPU, fp32 on a CPU."""
    return ("cuda", "bfloat16") if cuda else ("cpu", "float32")


class EvalWorker:
    """Scores slices of the tasks it was given with one checkpoint at a time (a Ray actor)."""

    def __init__(self, run: Location, tasks: list[EvalTask]):
        import torch

        self.run = run
        self.tasks = {task.name: task for task in tasks}
        device, dtype = device_and_dtype(torch.cuda.is_available())
        if device == "cpu":
            use_cpu_accelerator_without_cuda()  # loading a ZeRO checkpoint imports DeepSpeed
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.step: int | None = None
        self.model = None
        self.loads: list[int] = []

    def pid(self) -> int:
        return os.getpid()

    def loaded_steps(self) -> list[int]:
        """Steps this worker process loaded, in order (each once while it evaluates that step)."""
        return list(self.loads)

    def _model_for(self, step: int):
        from llm.checkpoint import load_model

        if self.step != step:
            self.model = None
            _, model = load_model(self.run, step)
            self.model = model.to(device=self.device, dtype=self.dtype)
            self.step = step
            self.loads.append(step)
        return self.model

    def run(self, step: int, piece: Slice) -> Tally:
        model = self._model_for(step) if piece.uses_model else None
        return self.tasks[piece.task].run(piece, model)


class EvalPool:
    """A fixed set of eval workers for one job; ``run`` scores a list of slices of one checkpoint."""

    def __init__(self, run: Location, tasks: list[EvalTask], workers: int | None = None, max_retries: int = 3):
        self.plan = worker_plan(ray.cluster_resources(), workers)
        self.max_retries = max_retries
        actor = ray.remote(EvalWorker).options(
            num_cpus=self.plan.num_cpus,
            num_gpus=self.plan.num_gpus,
            max_restarts=max_retries,
            max_task_retries=max_retries,
        )
        self.workers = [actor.remote(run, tasks) for _ in range(self.plan.count)]

    def __enter__(self) -> "EvalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []

    def pids(self) -> list[int]:
        return ray.get([worker.pid.remote() for worker in self.workers])

    def loaded_steps(self) -> list[list[int]]:
        return ray.get([worker.loaded_steps.remote() for worker in self.workers])

    def run(self, step: int, pieces: list[Slice], on_done: Callable[[int, int], None] | None = None) -> list[Tally]:
        """The tally of every slice, in the order of ``pieces``."""
        waiting = deque(range(len(pieces)))
        results: list[Tally | None] = [None] * len(pieces)
        in_flight: dict[ray.ObjectRef, tuple[int, int]] = {}
        busy = [0] * len(self.workers)

        def submit() -> None:
            for w, worker in enumerate(self.workers):
                while busy[w] < CALLS_IN_FLIGHT and waiting:
                    index = waiting.popleft()
                    in_flight[worker.run.remote(step, pieces[index])] = (index, w)
                    busy[w] += 1

        submit()
        done = 0
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            index, w = in_flight.pop(ref)
            busy[w] -= 1
            results[index] = self._result(ref, pieces[index])
            done += 1
            if on_done is not None:
                on_done(done, len(pieces))
            submit()
        return results

    def _result(self, ref: ray.ObjectRef, piece: Slice) -> Tally:
        try:
            return ray.get(ref)
        except RayTaskError as exc:
            if isinstance(exc.cause, (DataError, FileNotFoundError)):
                raise exc.cause from None
            raise
        except RayActorError:
            raise RuntimeError(
                f"an eval worker died more than {self.max_retries} times (eval.max_retries) while scoring task "
                f"'{piece.task}' {piece.source} part {piece.part} rows {piece.start}:{piece.stop}"
            ) from None
