"""The per-rank training entry point: ``python -m llm.trainer JOB_JSON``.

Started by torchrun, Ray Train or srun, which set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT.  Each rank builds the DeepSpeed engine, reads its
slice of every global batch, resumes from the latest committed checkpoint, and
writes run records (rank 0: metrics and events; every rank: a heartbeat).

Once training steps run, SIGTERM, SIGUSR1 and SIGUSR2 (or a launcher's stop request) only
raise a flag.  At the next step boundary the ranks agree (an all-reduce of the flag), save a
checkpoint together and exit with REQUEUE_EXIT_CODE, which launchers read as "requeue me".
Before the first step there is nothing to save, and these signals end the rank at once.
"""

from __future__ import annotations

import importlib
import os
import random
import resource
import signal
import sys
import time
import traceback

import numpy as np
import torch
import torch.distributed as dist

from data_shards.errors import DataError
from llm import checkpoint_resume, init_from
from llm.checkpoint_record import CheckpointRecord, InitOrigin
from llm.devices import die_with_parent
from llm.exit_codes import REQUEUE_EXIT_CODE, STOP_FILE_ENV, STOP_SIGNALS
from llm.flops import device_peak_tflops, flops_per_token, throughput
from llm.job import TrainJob
from llm.layout import ParallelLayout
from llm.schedule import lr_at
from llm.trainer_hooks import (
    CheckpointHook,
    HeartbeatHook,
    LossGuard,
    LossGuardStop,
    MetricsHook,
    PreemptionHook,
    RunEventsHook,
    TrainerHook,
    TrainerHooks,
)
from llm.trainer_state import DataPart, OriginPart, PositionPart, RngPart, StateParts
from ops.heartbeat import HeartbeatThread
from ops.records import RunRecords
from ops.scalar_logs import ScalarLogs


class StopRequest:
    """A request to save and stop, acted on only at a step boundary once all ranks agree.

    It comes from a signal (SIGTERM, SIGUSR1 or SIGUSR2, where the handlers are installed),
    from a launcher through :meth:`request` (Ray Train ranks run in threads, where Python
    cannot install signal handlers), or from a file named by ``KILN_STOP_FILE`` that the
    local launcher creates when it is asked to stop (torchrun forwards no USR1/USR2).
    """

    def __init__(self, stop_file: str | None = None, signals: bool = False):
        self.reason: str | None = None
        self.stop_file = stop_file if stop_file is not None else os.environ.get(STOP_FILE_ENV)
        self.signals = signals

    @property
    def requested(self) -> bool:
        if self.reason is None and self.stop_file and os.path.exists(self.stop_file):
            with open(self.stop_file, encoding="utf-8") as f:
                self.request(f.read().strip() or "stop file")
        return self.reason is not None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def arm(self) -> None:
        """Called as the first step is about to run.  With ``signals``, the stop signals raise the flag
        from now on (handlers can only be installed from the main thread).  Until then they keep their
        default action and end the rank at once: a rank still starting up (perhaps blocked in C code,
        where a Python handler never runs) has nothing to save, and must not outlive its launcher."""
        if self.signals:
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.request(signal.Signals(signum).name)

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def init_distributed(device: torch.device) -> None:
    import deepspeed

    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        skip_cpu_inference_op()
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def skip_cpu_inference_op() -> None:
    """Keep DeepSpeed's CPU backend from building its shared-memory op.

    Only DeepSpeed's *inference* all-reduce uses that op; training's collectives go through torch.distributed
    (gloo). Yet the backend JIT-compiles it with ninja on first use (minutes on a small machine, again whenever
    another ninja touched the build) and loads it in every rank at every start (about 2 s each).
    """
    # by module name: the attribute `deepspeed.comm.torch` is PyTorch itself, star-imported into the package
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None


class Trainer:
    """One rank's run: engine, data, records and the checkpoint protocol.

    The loop itself only steps; heartbeat, metrics, saving, preemption and the loss guard are hooks
    (``llm.trainer_hooks``), and what a checkpoint records is a registry of named parts (``llm.trainer_state``).
    """

    def __init__(self, job: TrainJob):
        from data_shards.loader import GlobalBatchLoader
        from data_shards.manifest import load_manifest
        from llm.checkpoint_save import CheckpointSaver
        from llm.engine import build_engine, resolve_device, resolve_precision

        self.job = job
        self.cfg = job.train
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(self.cfg, local_rank)
        init_distributed(self.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.records = RunRecords(job.run)
        self.scalars = ScalarLogs(job.run, self.cfg.log_to if self.rank == 0 else [])
        seed_everything(job.seed)
        manifest = load_manifest(job.data, "train")
        self.vocab_size = manifest.vocab_size
        self.precision = resolve_precision(self.cfg, self.device)
        self.layout = ParallelLayout.for_run(self.cfg, self.world, self.precision)
        self.resume_point = checkpoint_resume.find(job.run, self.layout)
        if self.resume_point is not None:
            checkpoint_resume.check_same_training(job.run, self.resume_point, job.config_hash)
        self.init_point = None  # a run with no checkpoint of its own starts from train.init_from, if set
        if self.resume_point is None and self.cfg.init_from:
            self.init_point = init_from.prepare(self.cfg, job.run, job.model, self.vocab_size, self.layout)
        self.origin: InitOrigin | None = None
        loading = self.resume_point or (self.init_point.point if self.init_point else None)
        self.engine = build_engine(
            job.model,
            self.cfg,
            self.layout,
            self.vocab_size,
            job.seed,
            self.device,
            load_universal=loading is not None and loading.route == "universal",
        )
        self.saver = CheckpointSaver(self.engine.engine, job.run, self.cfg.keep_checkpoints, on_commit=self.committed)
        self.engine.before_optimizer_step = self.saver.hold_until_copied
        self.loader = GlobalBatchLoader(
            job.data,
            "train",
            job.seed,
            job.model.seq_len,
            self.cfg.global_batch,
            dp_rank=self.layout.data_rank_of(self.rank),
            dp_world=self.layout.data_parallel,
            read=job.read,
        )
        self.flops_token = flops_per_token(job.model, self.vocab_size)
        self.peak = device_peak_tflops(self.cfg.peak_tflops) if self.precision == "bf16" or self.cfg.peak_tflops else None
        self.step = 0
        self.tokens = 0
        self.saved_step: int | None = None
        self.state = StateParts()
        for part in (PositionPart(self), DataPart(self), RngPart(self.rank, self.world), OriginPart(self)):
            self.state.register(part)
        self.hooks = TrainerHooks([])

    def install_hooks(self, hooks: list[TrainerHook]) -> None:
        """Hooks run in this order at each point of the loop; a hook that is a state part is checkpointed too."""
        self.hooks = TrainerHooks(hooks)
        for hook in hooks:
            if hasattr(hook, "state_dict"):
                self.state.register(hook)  # type: ignore[arg-type]
        self.engine.keep_update = self.keep_update

    def standard_hooks(self, stop: StopRequest, heartbeat: HeartbeatThread) -> list[TrainerHook]:
        """Heartbeat, the loss guard, metrics and lifecycle events (rank 0), checkpoints, then preemption."""
        hooks: list[TrainerHook] = [HeartbeatHook(heartbeat), LossGuard(self.cfg.loss_guard, self.rank, self.records)]
        if self.rank == 0:
            hooks.append(MetricsHook(self.records, self.scalars))
        hooks.append(CheckpointHook(self))
        if self.rank == 0:
            hooks.append(RunEventsHook(self.records, lambda: self.tokens))
        hooks.append(PreemptionHook(self, stop))
        return hooks

    def keep_update(self, loss: float) -> bool:
        return self.hooks.keep_update(self.step + 1, loss)

    def record(self) -> CheckpointRecord:
        """Collective (the RNG part gathers every rank's state): what COMMITTED will say about this step."""
        return CheckpointRecord(
            time=time.time(),
            layout=self.layout,
            precision=self.precision,
            model=self.job.model,
            vocab_size=self.vocab_size,
            config_hash=self.job.config_hash,
            **self.state.capture(),
        )

    def save(self) -> None:
        """Collective: start saving this step; it commits in the background."""
        self.saver.save(self.record())
        self.saved_step = self.step

    def committed(self, record: CheckpointRecord, url: str) -> None:
        self.hooks.after_commit(record, url)

    def start_from_source(self) -> None:
        init, self.init_point = self.init_point, None
        init_from.load(self.engine.engine, init, self.cfg)
        self.origin = init.origin
        if self.rank == 0:
            self.records.event(
                "init_from",
                run=init.origin.run,
                step=init.origin.step,
                optimizer=init.origin.optimizer,
                reshaped=init.point.route is not None,
            )

    def resume(self) -> None:
        if self.init_point is not None:
            self.start_from_source()
            return
        point = self.resume_point
        if point is None:
            return
        self.resume_point = None
        checkpoint_resume.load(self.engine.engine, point, self.cfg)
        self.state.restore(point.record)
        if self.rank == 0:
            self.records.event(
                "resume",
                step=self.step,
                tokens=self.tokens,
                reshaped=point.route is not None,
                world_size=self.world,
                rejected=point.rejected,
            )

    def run(self) -> int:
        if self.rank == 0:
            self.records.event(
                "start",
                world_size=self.world,
                zero_stage=self.layout.zero_stage,
                pipeline_stages=self.layout.pipeline_stages,
                precision=self.precision,
                steps=self.cfg.steps,
                device=self.device.type,
                config_hash=self.job.config_hash,
            )
        self.resume()
        hooks = self.hooks
        hooks.on_start(self.step)
        tokens_per_step = self.cfg.global_batch * self.job.model.seq_len
        logging = hooks.wants("on_metrics")
        while self.step < self.cfg.steps:
            exit_code = hooks.before_step(self.step)
            if exit_code is not None:
                hooks.on_stop(self.step, exit_code)
                return exit_code
            lr = lr_at(self.step, self.cfg)
            self.engine.set_lr(lr)
            started = time.perf_counter()
            batch = self.loader.next_batch()
            data_wait = self.loader.last_wait_s
            loss = self.engine.train_step(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
            self.step += 1
            self.tokens += tokens_per_step
            hooks.after_step(self.step, loss, elapsed)
            if logging and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                hooks.on_metrics(self.metrics_row(loss, lr, elapsed, data_wait, tokens_per_step))
        hooks.on_stop(self.step, 0)
        return 0

    def metrics_row(self, loss: float, lr: float, elapsed: float, data_wait: float, tokens_per_step: int) -> dict:
        tflops, mfu = throughput(self.flops_token, tokens_per_step, elapsed, self.world, self.peak)
        return {
            "step": self.step,
            "tokens": self.tokens,
            "loss": loss,
            "lr": lr,
            "grad_norm": self.engine.grad_norm(),
            "step_time_s": elapsed,
            "tokens_per_s": tokens_per_step / max(elapsed, 1e-12),
            "tflops": tflops,
            "mfu": mfu,
            "mem_gb": memory_gb(self.device),
            "data_wait_s": data_wait,
        }


def drain_collectives() -> None:
    """Let gloo's worker threads let go of the last collective's tensors before the interpreter exits.

    A gloo worker drops its reference to a collective's tensors only after the caller has seen the
    collective complete, and that drop takes the GIL.  If the main thread is already finalizing the
    interpreter by then, the worker thread is torn down mid-destructor and the process aborts
    ("terminate called without an active exception").  A barrier holds no tensors and releases the
    GIL while it waits, so every earlier collective is fully released when it returns.
    """
    dist.barrier()


def run_training(job: TrainJob, stop: StopRequest | None = None) -> int:
    """Train one rank of ``job`` to ``train.steps``; 0 when done, REQUEUE_EXIT_CODE after a preemption save.

    ``stop`` is how this rank learns of a stop request; by default only the stop file is watched.
    """
    stop = stop or StopRequest()
    records = RunRecords(job.run)
    heartbeat = HeartbeatThread(records, int(os.environ.get("RANK", "0")), job.train.heartbeat_s)
    heartbeat.start()
    rc = 1
    trainer = None
    try:
        trainer = Trainer(job)
        trainer.install_hooks(trainer.standard_hooks(stop, heartbeat))
        rc = trainer.run()
        drain_collectives()
        return rc
    except Exception as exc:  # whatever ends this rank is recorded as its failure event, then it exits 1
        rc = 1
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
        records.event("failure", rank=rank, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (DataError, LossGuardStop)):  # bad input or a bad loss: one line, no traceback
            # one write of the whole line: ranks run unbuffered (python -u), where print's separate write of
            # the newline lets another rank's message land in the middle of this one
            sys.stderr.write(f"rank {rank}: {exc}\n")
        else:
            traceback.print_exc()
        return 1
    finally:
        if trainer is not None:
            trainer.scalars.close()
        heartbeat.stop(failed=rc not in (0, REQUEUE_EXIT_CODE))
        records.close()  # the launcher reads these records (a preemption, a failure) right after the ranks exit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m llm.trainer JOB_JSON", file=sys.stderr)
        return 2
    die_with_parent()
    stop = StopRequest(signals=True)
    rc = run_training(TrainJob.load(args[0]), stop)
    if rc == REQUEUE_EXIT_CODE and os.environ.get("TORCHELASTIC_RUN_ID"):
        # torchrun's agent takes any non-zero exit for a failure and terminates the other ranks mid-exit;
        # its launcher reads the stop from the run's preemption event instead.
        rc = 0
    if dist.is_initialized():  # this entry point owns the process group: close it before the interpreter exits
        dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(main())
