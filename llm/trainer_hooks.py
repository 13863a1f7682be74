"""The work the training loop does at its fixed points, as hooks.

``Trainer.run`` calls, in the order the hooks were given: ``on_start`` once the run stands at its first
step, ``before_step`` at each step boundary (an exit code returned there ends the run), ``keep_update``
with the step's loss right before its optimizer update, ``after_step`` when a step is done, ``on_metrics``
with each metrics row (rank 0), ``after_commit`` when a checkpoint is committed and ``on_stop`` as the
run ends.  A hook defines only the methods it needs; the loop calls only those.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, Sequence

from llm.config import LossGuardConfig
from llm.exit_codes import REQUEUE_EXIT_CODE

if TYPE_CHECKING:
    from llm.checkpoint_record import CheckpointRecord
    from llm.trainer import StopRequest, Trainer
    from ops.heartbeat import HeartbeatThread
    from ops.records import RunRecords
    from ops.scalar_logs import ScalarLogs


class TrainerHook:
    """A piece of the training loop's work; every method here does nothing, a hook overrides what it needs."""

    def on_start(self, step: int) -> None:
        """The run stands at ``step`` (0, or where it resumed) and is about to run its first step."""

    def before_step(self, step: int) -> int | None:
        """At the boundary after ``step`` steps: None goes on; an exit code ends the run with it."""
        return None

    def keep_update(self, step: int, loss: float) -> bool:
        """Step ``step``'s loss (every rank's mean) before its optimizer update: False skips the update."""
        return True

    def after_step(self, step: int, loss: float, elapsed_s: float) -> None:
        """Step ``step`` is done in ``elapsed_s`` seconds."""

    def on_metrics(self, row: dict[str, Any]) -> None:
        """Rank 0's metrics row of a logged step."""

    def after_commit(self, record: CheckpointRecord, url: str) -> None:
        """The checkpoint of ``record`` is committed at ``url`` (seen at a step boundary or the final wait)."""

    def on_stop(self, step: int, exit_code: int) -> None:
        """The run ends after ``step`` steps with ``exit_code``."""


POINTS = ("on_start", "before_step", "keep_update", "after_step", "on_metrics", "after_commit", "on_stop")


class TrainerHooks:
    """An ordered list of hooks, called at each point by those that define it (the rest cost the loop nothing)."""

    def __init__(self, hooks: Sequence[TrainerHook]):
        self.hooks = list(hooks)
        self._at = {
            point: [getattr(h, point) for h in self.hooks if getattr(type(h), point) is not getattr(TrainerHook, point)]
            for point in POINTS
        }

    def wants(self, point: str) -> bool:
        return bool(self._at[point])

    def on_start(self, step: int) -> None:
        for call in self._at["on_start"]:
            call(step)

    def before_step(self, step: int) -> int | None:
        for call in self._at["before_step"]:
            exit_code = call(step)
            if exit_code is not None:
                return exit_code
        return None

    def keep_update(self, step: int, loss: float) -> bool:
        keep = True
        for call in self._at["keep_update"]:  # every hook sees every step, whatever an earlier one said
            keep = call(step, loss) and keep
        return keep

    def after_step(self, step: int, loss: float, elapsed_s: float) -> None:
        for call in self._at["after_step"]:
            call(step, loss, elapsed_s)

    def on_metrics(self, row: dict[str, Any]) -> None:
        for call in self._at["on_metrics"]:
            call(row)

    def after_commit(self, record: CheckpointRecord, url: str) -> None:
        for call in self._at["after_commit"]:
            call(record, url)

    def on_stop(self, step: int, exit_code: int) -> None:
        for call in self._at["on_stop"]:
            call(step, exit_code)


class HeartbeatHook(TrainerHook):
    """Tells the rank's heartbeat thread where the run stands (a few attribute writes a step)."""

    def __init__(self, heartbeat: HeartbeatThread):
        self.heartbeat = heartbeat

    def on_start(self, step: int) -> None:
        self.heartbeat.at_step(step)

    def after_step(self, step: int, loss: float, elapsed_s: float) -> None:
        self.heartbeat.step_done(step, elapsed_s)


class MetricsHook(TrainerHook):
    """Writes rank 0's metrics rows to the run records and to the configured scalar logs."""

    def __init__(self, records: RunRecords, scalars: ScalarLogs):
        self.records = records
        self.scalars = scalars

    def on_metrics(self, row: dict[str, Any]) -> None:
        self.records.log_metrics(row)
        self.scalars.add(row["step"], row)


class CheckpointHook(TrainerHook):
    """Saves on ``train.checkpoint_every`` (and at the end), moves background commits along, waits for the last."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.every = trainer.cfg.checkpoint_every
        self.last = trainer.cfg.steps if trainer.cfg.checkpoint_at_end else None

    def before_step(self, step: int) -> int | None:
        self.trainer.saver.poll()
        return None

    def after_step(self, step: int, loss: float, elapsed_s: float) -> None:
        if step % self.every == 0 or step == self.last:
            self.trainer.save()

    def on_stop(self, step: int, exit_code: int) -> None:
        self.trainer.saver.wait()


class RunEventsHook(TrainerHook):
    """Rank 0's lifecycle events: each committed checkpoint, and the finish."""

    def __init__(self, records: RunRecords, tokens_of: Any):
        self.records = records
        self.tokens_of = tokens_of

    def after_commit(self, record: CheckpointRecord, url: str) -> None:
        self.records.event("checkpoint", step=record.step, url=url, tokens=record.tokens)

    def on_stop(self, step: int, exit_code: int) -> None:
        if exit_code == 0:
            self.records.event("finish", step=step, tokens=self.tokens_of())


class PreemptionHook(TrainerHook):
    """A stop request, once every rank agrees at a step boundary: save this step, record it, exit to be requeued.

    The agreement is a collective (an all-reduce of every rank's flag) at every boundary: a request
    that reached only some ranks still stops them all at the same step.
    """

    def __init__(self, trainer: Trainer, stop: StopRequest):
        self.trainer = trainer
        self.stop = stop

    def on_start(self, step: int) -> None:
        self.stop.arm()

    def before_step(self, step: int) -> int | None:
        if not self.stop.agreed(self.trainer.device):
            return None
        import torch.distributed as dist

        trainer = self.trainer
        if trainer.saved_step != step:
            trainer.save()
        trainer.saver.wait()
        received: list[str | None] = [None] * trainer.world
        dist.all_gather_object(received, self.stop.reason)
        if trainer.rank == 0:
            signals = {str(rank): name for rank, name in enumerate(received) if name}
            trainer.records.event("preemption", step=step, signals=signals, exit_code=REQUEUE_EXIT_CODE)
        return REQUEUE_EXIT_CODE


class LossGuardStop(RuntimeError):
    """``train.loss_guard.action=stop`` met a bad loss: the run ends with this one-line error."""


def loss_verdict(loss: float, kept: Sequence[float], cfg: LossGuardConfig) -> str | None:
    """Why a step with ``loss`` must not update the weights, given the recent kept losses; None when it may."""
    if not math.isfinite(loss):
        return f"loss {loss} is not finite"
    if cfg.spike_factor is not None and len(kept) >= cfg.window:
        mean = sum(kept) / len(kept)
        if loss > cfg.spike_factor * mean:
            return f"loss {loss:.4g} is above {cfg.spike_factor:g} x {mean:.4g}, the mean of the last {len(kept)} kept losses"
    return None


class LossGuard(TrainerHook):
    """Skips the update of a step whose loss is not finite or spikes (``train.loss_guard``), or stops the run.

    Every rank judges the same all-reduced loss against the same window, so all take the same decision
    without another collective.  The window of kept losses is checkpointed (a state part named
    ``loss_guard``), so a resumed run judges as the uninterrupted one would.
    """

    name = "loss_guard"
    record_fields: tuple[str, ...] = ()

    def __init__(self, cfg: LossGuardConfig, rank: int, records: RunRecords):
        self.cfg = cfg
        self.rank = rank
        self.records = records
        self.kept: deque[float] = deque(maxlen=cfg.window)

    def keep_update(self, step: int, loss: float) -> bool:
        why = loss_verdict(loss, self.kept, self.cfg)
        if why is None:
            self.kept.append(loss)
            return True
        if self.cfg.action == "stop":
            raise LossGuardStop(f"step {step}: {why} (train.loss_guard.action=stop)")
        if self.rank == 0:
            self.records.event("loss_guard", step=step, action="skip", reason=why)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kept = deque(state["kept"], maxlen=self.cfg.window)
