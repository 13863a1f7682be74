"""Resuming a training run: which committed checkpoint, which of its files each rank reads, checked how.

:func:`find` runs before the engine is built (a changed layout needs an engine built for the
universal form).  It takes the newest committed checkpoint - ``latest`` first - and has
every rank check the files it will load against the record:

* same layout: each rank reads only its own files (``deepspeed_files.rank_files``: its
  stage's model states and its own optimizer partition), checked in place on a local disk,
  fetched and checked on the way into a private temporary folder from an object store;
* changed layout: one rank per host reads every file and converts the step to DeepSpeed's
  universal form in a private temporary folder; the other ranks of the host load from it.

The ranks agree on the outcome.  A damaged or missing file anywhere makes all of them fall
back to the previous committed checkpoint, with a warning naming the file; when none is
left, a CheckpointError says so.  :func:`load` then restores the engine, weights only.
"""

from __future__ import annotations

import os
import socket
import tempfile
import warnings
from dataclasses import dataclass, field

import torch.distributed as dist

from llm import checkpoint, checkpoint_files, deepspeed_files
from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord, FileEntry
from llm.config import TrainConfig
from llm.deepspeed_files import Route
from llm.layout import ParallelLayout
from ops import storage
from ops.storage import Place


@dataclass
class ResumePoint:
    record: CheckpointRecord
    route: Route | None
    load_dir: str = ""  # the folder holding the step folder DeepSpeed reads
    verified: list[str] = field(default_factory=list)  # local paths of the files this rank checked
    rejected: list[str] = field(default_factory=list)  # why newer committed checkpoints were passed over
    scratch: tempfile.TemporaryDirectory | None = None

    def cleanup(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None


def _check_files(url: str, entries: list[FileEntry], into: str | None) -> list[str]:
    """Problems with ``entries`` of ``url``: checked in place (``into`` None) or fetched into ``into``."""
    if into is None:
        return [p for e in entries if (p := checkpoint_files.verify(url, e))]
    return [p for e in entries if (p := checkpoint_files.fetch(url, e, into))]


def _as_saved(run: Place, record: CheckpointRecord, layout: ParallelLayout, point: ResumePoint) -> list[str]:
    """This rank's own files, checked; fills in where DeepSpeed finds them."""
    url = checkpoint.step_url(run, record.step)
    tag = checkpoint.step_name(record.step)
    entries = deepspeed_files.rank_files(record.files, layout, dist.get_rank())
    if storage.is_local(url):
        point.load_dir = storage.filesystem(checkpoint.checkpoints_url(run))[1]
        problems = _check_files(url, entries, None)
    else:
        point.scratch = tempfile.TemporaryDirectory(prefix="kiln-resume-")
        point.load_dir = point.scratch.name
        problems = _check_files(url, entries, os.path.join(point.load_dir, tag))
    point.verified = [os.path.join(point.load_dir, tag, e.path) for e in entries]
    return problems


def _converted(run: Place, record: CheckpointRecord, point: ResumePoint) -> list[str]:
    """On one rank per host: every file checked, and the step converted to the universal form."""
    url = checkpoint.step_url(run, record.step)
    tag = checkpoint.step_name(record.step)
    point.scratch = tempfile.TemporaryDirectory(prefix="kiln-reshape-")
    if storage.is_local(url):
        source = storage.filesystem(url)[1]
        problems = _check_files(url, record.files, None)
    else:
        source = os.path.join(point.scratch.name, "source", tag)
        problems = _check_files(url, record.files, source)
    if not problems:
        try:
            deepspeed_files.to_universal(source, os.path.join(point.scratch.name, "universal"), tag, record)
        except CheckpointError as error:
            problems = [str(error)]
    point.load_dir = os.path.join(point.scratch.name, "universal")
    return problems


def prepare_step(run: Place, step: int, layout: ParallelLayout) -> tuple[ResumePoint | None, list[str]]:
    """Collective: this step of ``run`` checked by every rank; the point and every rank's problems.

    ``run`` may be another run's: ``llm.init_from`` starts a run from one of its checkpoints."""
    point, problems = None, []
    try:
        record = checkpoint.read_commit(run, step)
    except (CheckpointError, FileNotFoundError) as error:
        problems = [str(error)]
    else:
        point = ResumePoint(record=record, route=deepspeed_files.reshape_route(record, layout))
        if point.route is None:
            problems = _as_saved(run, record, layout, point)
        elif int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one rank per host converts
            problems = _converted(run, record, point)
    host = socket.gethostname()
    converted = point.load_dir if point is not None and point.route is not None and point.scratch else None
    reports: list = [None] * dist.get_world_size()
    dist.all_gather_object(reports, (host, converted, problems))
    if point is not None and point.route is not None and point.scratch is None:
        on_this_host = [folder for h, folder, _ in reports if h == host and folder]
        if not on_this_host:
            raise CheckpointError(
                f"no rank on host {host} converted {checkpoint.step_url(run, step)} (the rank with LOCAL_RANK=0 does)"
            )
        point.load_dir = on_this_host[0]
    return point, list(dict.fromkeys(p for _, _, rank_problems in reports for p in rank_problems))


def find(run: Place, layout: ParallelLayout) -> ResumePoint | None:
    """Collective: the checked checkpoint this run resumes from, or None when it has none yet."""
    candidates = checkpoint.resume_candidates(run)
    rejected: list[str] = []
    for step in candidates:
        point, problems = prepare_step(run, step, layout)
        if not problems:
            point.rejected = rejected
            return point
        if point is not None:
            point.cleanup()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        rejected.append(f"{checkpoint.step_name(step)}: {problems[0]}{more}")
        warnings.warn(
            f"cannot resume from {checkpoint.step_url(run, step)}: {problems[0]}{more}; "
            "trying the previous committed checkpoint",
            stacklevel=2,
        )
    if candidates:
        raise CheckpointError(
            f"no committed checkpoint under {checkpoint.checkpoints_url(run)} passes its "
            f"checks ({rejected[-1]}); move the damaged step folders away to start afresh"
        )
    return None


def check_same_training(run: Place, point: ResumePoint, config_hash: str) -> None:
    """A resume continues the past the checkpoint holds: its config hash (model, data, seed, batch and
    learning-rate schedule) must be this config's.  Only train.steps and the layout may change."""
    record = point.record
    if record.config_hash != config_hash:
        point.cleanup()
        raise CheckpointError(
            f"{checkpoint.step_url(run, record.step)} was trained with another model, data, seed, global_batch or "
            "learning-rate schedule than this config; a resume may change only train.steps and the layout "
            f"(start a new run from it with train.init_from={run}@{record.step})"
        )


def load(ds_engine, point: ResumePoint, cfg: TrainConfig) -> None:
    """Collective: restore weights and optimizer state from ``point``, then remove its temporary files."""
    tag = checkpoint.step_name(point.record.step)
    try:
        if point.route is None:
            deepspeed_files.load_as_saved(ds_engine, point.load_dir, tag, point.verified)
        elif point.route == "plain":
            deepspeed_files.load_universal_into_plain(ds_engine, os.path.join(point.load_dir, tag))
        else:
            deepspeed_files.load_universal(ds_engine, point.load_dir, tag)
        if point.route is not None:
            deepspeed_files.repair_optimizer_groups(ds_engine, cfg)
        dist.barrier()  # the ranks of a host have read its conversion before its owner removes it
    finally:
        point.cleanup()
