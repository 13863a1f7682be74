"""Ray Train ranks: ``train.nodes × train.nproc`` workers, each running the same per-rank loop.

Ray Train places the workers, sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
and the torch process group; ``llm.trainer.run_training`` then builds its DeepSpeed
engine on that group.  A failed worker makes Ray Train restart the whole group, up to
``train.max_restarts`` times (``FailureConfig``), and the ranks resume from the last
committed checkpoint; a callback on Ray Train's controller records each failure and
restart as a run event.

Ranks run in threads of Ray's worker processes, where Python cannot install signal
handlers: a stop request reaches them through a small actor that every rank polls.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import pyarrow.fs
import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.torch.config import _TorchBackend

from llm.checkpoint import latest_committed_step
from llm.devices import configure_this_process, gloo_interface_environment
from llm.exit_codes import REQUEUE_EXIT_CODE
from llm.job import TrainJob
from ops import storage
from ops.rank_failure import RankFailure
from ops.records import RunRecords

STOP_POLL_S = 0.5
STOP_READ_TIMEOUT_S = 30.0


@ray.remote(num_cpus=0)
class StopFlag:
    """The driver's stop request, where every rank can see it."""

    def __init__(self):
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def requested(self) -> str | None:
        return self.reason


def _read_stop_flag(flag) -> str | None:
    return ray.get(flag.requested.remote(), timeout=STOP_READ_TIMEOUT_S)


def _watch_stop_flag(read_flag: Callable[[], str | None], stop, done: threading.Event) -> None:
    """Forward the driver's stop request to ``stop`` until ``done``; a slow read is asked again, not given up."""
    while not done.wait(STOP_POLL_S):
        try:
            reason = read_flag()
        except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
            continue  # a busy head or a flag actor being restarted: the next poll asks again
        except ray.exceptions.RayActorError:
            return  # the flag died with its owner, the driver: Ray Train tears the ranks down itself
        if reason:
            stop.request(reason)
            return


def _rank_main(config: dict[str, Any]) -> None:
    """Body of one Ray Train worker: the per-rank loop; a non-zero exit is a failure Ray Train retries."""
    job = TrainJob.from_shared(config["job"])
    configure_this_process(job.train.nproc)
    from llm.trainer import StopRequest, run_training

    stop = StopRequest(stop_file="")
    done = threading.Event()
    flag = config["stop_flag"]
    watcher = threading.Thread(target=_watch_stop_flag, args=(lambda: _read_stop_flag(flag), stop, done), daemon=True)
    watcher.start()
    try:
        rc = run_training(job, stop)
    finally:
        done.set()
    if rc not in (0, REQUEUE_EXIT_CODE):
        raise RuntimeError(f"rank exited with code {rc}")


def _bind_gloo_to_the_node_address() -> None:
    """In a worker: gloo binds the interface of this worker's Ray node address, not what the hostname resolves to."""
    os.environ.update(gloo_interface_environment(ray.util.get_node_ip_address(), os.environ))


class _NodeAddressTorchBackend(_TorchBackend):
    """Ray Train's torch backend (private in Ray, extended as Ray's own TorchftConfig does), with gloo bound
    to each node's Ray address before the process group forms: a hostname that resolves to a loopback
    address (127.0.1.1 in Debian's /etc/hosts) would otherwise have the other nodes dial their own loopback."""

    def on_start(self, worker_group, backend_config) -> None:
        worker_group.execute(_bind_gloo_to_the_node_address)
        super().on_start(worker_group, backend_config)


class NodeAddressTorchConfig(TorchConfig):
    @property
    def backend_cls(self):
        return _NodeAddressTorchBackend


def _failures(job: TrainJob, worker_errors: dict[int, Exception]) -> list[RankFailure]:
    """Failed ranks with the host their last heartbeat names (an actor killed outright says nothing itself)."""
    beats = {b.get("rank"): b for b in RunRecords(job.run).heartbeats()}
    failures = []
    for rank, error in sorted(worker_errors.items()):
        beat = beats.get(rank, {})
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        failures.append(
            RankFailure(rank=rank, host=str(beat.get("host", "unknown")), pid=beat.get("pid"), error=first_line[:300])
        )
    return failures


class RecordRestarts(UserCallback):
    """Runs on Ray Train's controller: each failure it will recover from becomes a ``restart`` event."""

    def __init__(self, job: TrainJob):
        self.job = job.shareable()  # pickled to the controller: credentials come from its environment
        self.failures_seen = 0

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        self.failures_seen += 1
        job = TrainJob.from_shared(self.job)
        max_restarts = job.train.max_restarts
        if self.failures_seen > max_restarts:
            return  # the launcher records the final failure
        records = RunRecords(job.run)
        records.event(
            "restart",
            launcher="ray",
            attempt=self.failures_seen,
            max_restarts=max_restarts,
            failures=[f.model_dump(exclude_none=True) for f in _failures(job, worker_exceptions)],
            step=latest_committed_step(job.run) or 0,
        )
        records.flush()  # the controller may be torn down with the run


def _train_storage(job: TrainJob) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Where Ray Train keeps its own run state: beside the run's records, on the run's storage."""
    url = job.run.join("ray-train")
    if storage.is_local(url):
        return os.path.abspath(storage.filesystem(url)[1]), None
    fs, path = storage.filesystem(url)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


class RayTrainRun:
    """One launch of a job's ranks on the connected Ray cluster."""

    def __init__(self, job: TrainJob):
        self.job = job
        self.stop_flag = StopFlag.remote()

    def request_stop(self, reason: str) -> None:
        self.stop_flag.request.remote(reason)  # returns at once; ranks see it within STOP_POLL_S

    def fit(self) -> list[RankFailure]:
        """Train to the end (or to a stop); returns the ranks that failed for good, if any."""
        train = self.job.train
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0  # the cluster's hardware, not the driver's
        path, filesystem = _train_storage(self.job)
        trainer = TorchTrainer(
            _rank_main,
            train_loop_config={"job": self.job.shareable(), "stop_flag": self.stop_flag},
            scaling_config=ScalingConfig(
                num_workers=train.world_size,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": 1},
                placement_strategy="SPREAD" if train.nodes > 1 else "PACK",
            ),
            torch_config=NodeAddressTorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name=os.path.basename(self.job.run_dir.rstrip("/")) or "kiln",
                storage_path=path,
                storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=train.max_restarts),
                callbacks=[RecordRestarts(self.job)],
            ),
        )
        try:
            trainer.fit()
        except ray.train.WorkerGroupError as e:
            return _failures(self.job, e.worker_failures)
        except ray.train.ControllerError as e:
            return [RankFailure(host="ray-train-controller", error=str(e.controller_failure).strip()[:300])]
        return []
