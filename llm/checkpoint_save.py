"""Asynchronous, committed checkpoint saves.

A save blocks the training loop only while DeepSpeed hands over this rank's state dicts,
which are remembered by reference (``llm.snapshot``).  A background thread then copies
them into CPU memory - the trainer holds its next optimizer step until that copy is done -
and writes each file straight to the run's storage, hashing it on the way.  Commit order:

    every rank's writer has its files durably in place
    → the writers exchange their file lists (over a gloo group of their own, so none of their
      collectives can interleave with the training loop's)
    → rank 0 writes COMMITTED (the record, listing every file with its size and sha256)
    → rank 0 writes ``latest``, then prunes old checkpoints.

At most one save is in flight: the next one, the end of the run and a preemption wait for
it first.  A crash at any moment, the writer's included, leaves the previous committed
checkpoint as the resume point.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from llm import checkpoint, checkpoint_files, deepspeed_files
from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord, FileEntry
from llm.snapshot import Snapshot
from ops import storage
from ops.checkpoints import commit_url, latest_url

# How long one rank's writer waits for the others' file lists: a slow upload, not a hang.
WRITER_TIMEOUT = timedelta(hours=6)


@dataclass
class _Save:
    record: CheckpointRecord
    snapshot: Snapshot | None
    thread: threading.Thread | None = None
    error: BaseException | None = None  # what the writer thread raised
    problem: str | None = None  # why this rank could not write its files, told to every rank
    committed: bool = False
    files: list[FileEntry] = field(default_factory=list)


class CheckpointSaver:
    """One rank's side of the save protocol; every rank makes one, in the same order, and calls
    :meth:`save` together."""

    def __init__(
        self,
        ds_engine,
        run: storage.Place,
        keep: int,
        on_commit: Callable[[CheckpointRecord, str], None] | None = None,
    ):
        self.ds_engine = ds_engine
        self.run = run
        self.keep = keep
        self.on_commit = on_commit
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.group = dist.new_group(backend="gloo", timeout=WRITER_TIMEOUT)
        self._inflight: _Save | None = None

    def save(self, record: CheckpointRecord) -> None:
        """Collective: wait for the save in flight, take this rank's snapshot, write it in the background."""
        self.wait()
        if self.rank == 0 and record.step in checkpoint.step_dirs(self.run):
            # An earlier attempt's folder for this step (never the resume point): no file of it may mix in.
            checkpoint.remove_step(self.run, record.step)
        dist.barrier()
        snapshot = deepspeed_files.snapshot(self.ds_engine, checkpoint.step_name(record.step))
        inflight = _Save(record=record, snapshot=snapshot)
        inflight.thread = threading.Thread(target=self._write, args=(inflight,), name="kiln-checkpoint-writer", daemon=True)
        self._inflight = inflight
        inflight.thread.start()

    def hold_until_copied(self) -> None:
        """Block until the snapshot in flight no longer reads the live tensors (before they change)."""
        inflight = self._inflight
        if inflight is not None and inflight.snapshot is not None:
            inflight.snapshot.wait_copied()

    def poll(self) -> None:
        """Finish the save in flight if its writer is done; never blocks."""
        if self._inflight is not None and not self._inflight.thread.is_alive():
            self.wait()

    def wait(self) -> None:
        """Block until the save in flight is committed (or raise what went wrong with it)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        inflight.thread.join()
        if inflight.error is not None:
            raise inflight.error
        if inflight.committed and self.on_commit is not None:
            self.on_commit(inflight.record, str(checkpoint.step_url(self.run, inflight.record.step)))

    def _write(self, inflight: _Save) -> None:
        try:
            self._write_files(inflight)
            self._agree_and_commit(inflight)
        except BaseException as error:  # raised in the training thread by wait()
            inflight.error = error

    def _write_files(self, inflight: _Save) -> None:
        target = checkpoint.step_url(self.run, inflight.record.step)
        snapshot = inflight.snapshot
        try:
            snapshot.copy()
            for name, state in snapshot.files():
                inflight.files.append(
                    checkpoint_files.write_file(target, name, lambda stream, state=state: torch.save(state, stream), self.rank)
                )
        except Exception as error:  # storage of any kind: the ranks then agree not to commit, and say why
            inflight.problem = f"rank {self.rank} could not write its part of {target}: {type(error).__name__}: {error}"
        finally:
            inflight.snapshot = None  # the CPU copy is no longer needed

    def _agree_and_commit(self, inflight: _Save) -> None:
        gathered: list[tuple[list[FileEntry], str | None] | None] = [None] * self.world
        dist.all_gather_object(gathered, (inflight.files, inflight.problem), group=self.group)
        problems = [problem for _, problem in gathered if problem]
        if problems:
            raise CheckpointError("; ".join(problems))
        if self.rank == 0:
            files = sorted((entry for entries, _ in gathered for entry in entries), key=lambda e: e.path)
            if len({e.path for e in files}) != len(files):
                target = checkpoint.step_url(self.run, inflight.record.step)
                raise CheckpointError(f"two ranks wrote the same file into {target}")
            self._commit(inflight.record.model_copy(update={"files": files, "time": time.time()}))
        inflight.committed = True

    def _commit(self, record: CheckpointRecord) -> None:
        storage.write_text(commit_url(self.run, record.step), record.model_dump_json(indent=2) + "\n")
        storage.write_text(latest_url(self.run), checkpoint.step_name(record.step) + "\n")
        checkpoint.prune(self.run, self.keep)
