"""Starting a run from another run's checkpoint: ``train.init_from: RUN_URL[@STEP]``.

A staged pretraining run (a decay or annealing branch, a context extension, a new layout)
begins from the weights of another run's committed checkpoint - its newest by default -
and otherwise follows its own config: data, sequence length, RoPE base, schedule, layout.
With ``train.init_optimizer`` the source's optimizer state comes along too; without it the
optimizer starts afresh.  The step counter, data position and random state are the new run's.

The checkpoint travels the road a resume takes (``checkpoint_resume.prepare_step``): each rank
checks the files it reads, and a layout other than the source's goes through DeepSpeed's
universal form.  Before any rank starts, :func:`check_source` checks the source in a plain
process (committed step, model shape, every file's sha256), so a bad source is one line and
nothing is written to the new run.  Every checkpoint of the new run records its
:class:`~llm.checkpoint_record.InitOrigin`; once the run has a checkpoint of its own it
resumes from that and never looks at ``init_from`` again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.distributed as dist

from llm import checkpoint, checkpoint_resume, deepspeed_files
from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord, InitOrigin
from llm.checkpoint_resume import ResumePoint
from llm.config import ModelConfig, TrainConfig
from llm.layout import ParallelLayout
from ops.storage import Location

_STEP_SUFFIX = re.compile(r"^(?P<url>.+)@(?P<step>\d+)$")

# What fixes the shape of the weights; seq_len and rope_theta do not, so a stage may change them.
SHAPE_FIELDS = ("dim", "layers", "heads", "n_kv_heads", "hidden_dim", "tie_embeddings")


class InitFromError(CheckpointError):
    """A ``train.init_from`` source that cannot start this run; the message is one line."""


@dataclass
class InitPoint:
    """A source checkpoint checked by this rank, ready to load into this rank's engine."""

    point: ResumePoint
    origin: InitOrigin


def parse(spec: str) -> tuple[str, int | None]:
    """``RUN_URL@STEP`` -> (RUN_URL, STEP); a plain RUN_URL -> (RUN_URL, None)."""
    match = _STEP_SUFFIX.match(spec)
    if match:
        return match["url"], int(match["step"])
    return spec, None


def source_step(spec: str, run: Location) -> tuple[Location, int]:
    """The source run (reached with the storage options of ``run``, the run that starts from it) and the
    committed step ``spec`` names; an InitFromError when there is none."""
    source, step = parse(spec)
    url = run.with_url(source)
    if step is None:
        step = checkpoint.latest_committed_step(url)
        if step is None:
            raise InitFromError(f"train.init_from={spec}: {checkpoint.checkpoints_url(url)} holds no committed checkpoint")
        return url, step
    if step not in checkpoint.committed_steps(url):
        have = checkpoint.committed_steps(url)
        raise InitFromError(
            f"train.init_from={spec}: {url} has no committed checkpoint at step {step} "
            f"(committed: {', '.join(map(str, have)) if have else 'none'})"
        )
    return url, step


def shape_mismatch(source: CheckpointRecord, model: ModelConfig, vocab_size: int) -> str | None:
    """The first field in which ``model`` (with ``vocab_size``) differs in shape from the source, as one line."""
    for name in SHAPE_FIELDS:
        theirs, ours = getattr(source.model, name), getattr(model, name)
        if theirs != ours:
            key = "model.kv_heads" if name == "n_kv_heads" else "model.ffn_hidden" if name == "hidden_dim" else f"model.{name}"
            return f"{key}={ours} but the source checkpoint has {theirs}"
    if source.vocab_size != vocab_size:
        return f"the data's vocabulary has {vocab_size} tokens but the source checkpoint's has {source.vocab_size}"
    return None


def origin_of(source: Location, record: CheckpointRecord, optimizer: bool) -> InitOrigin:
    return InitOrigin(run=source.url, step=record.step, sha256={f.path: f.sha256 for f in record.files}, optimizer=optimizer)


def _read_source(spec: str, run: Location, model: ModelConfig, vocab_size: int) -> tuple[Location, CheckpointRecord]:
    url, step = source_step(spec, run)
    try:
        record = checkpoint.read_commit(url, step)
    except CheckpointError as error:
        raise InitFromError(f"train.init_from={spec}: {error}") from None
    problem = shape_mismatch(record, model, vocab_size)
    if problem:
        raise InitFromError(f"train.init_from={spec}: {problem}")
    return url, record


def check_source(cfg: TrainConfig, run: Location, model: ModelConfig, vocab_size: int) -> InitOrigin:
    """In a plain process, before ``run`` starts: its source exists, fits ``model`` and every file of it
    matches its recorded sha256.  The origin it gives, or an InitFromError (one line)."""
    url, record = _read_source(cfg.init_from, run, model, vocab_size)
    try:
        with checkpoint.local_files(url, record.step, record.files):
            pass
    except CheckpointError as error:
        raise InitFromError(f"train.init_from={cfg.init_from}: {error}") from None
    return origin_of(url, record, cfg.init_optimizer)


def prepare(cfg: TrainConfig, run: Location, model: ModelConfig, vocab_size: int, layout: ParallelLayout) -> InitPoint:
    """Collective, before the engine is built: the source checkpoint checked by every rank for ``layout``."""
    resolved: list = [None]
    if dist.get_rank() == 0:  # one decision, should the source commit a newer step meanwhile
        try:
            resolved[0] = _read_source(cfg.init_from, run, model, vocab_size)
        except CheckpointError as error:
            resolved[0] = str(error)
    dist.broadcast_object_list(resolved, src=0)
    if isinstance(resolved[0], str):
        raise InitFromError(resolved[0])
    url, record = resolved[0]
    point, problems = checkpoint_resume.prepare_step(url, record.step, layout)
    if problems:
        if point is not None:
            point.cleanup()
        raise InitFromError(f"train.init_from={cfg.init_from}: {problems[0]}")
    return InitPoint(point=point, origin=origin_of(url, record, cfg.init_optimizer))


def load(ds_engine, init: InitPoint, cfg: TrainConfig) -> None:
    """Collective: the source's weights (and with ``train.init_optimizer`` its optimizer state) into the engine."""
    checkpoint_resume.load(ds_engine, init.point, cfg)
    deepspeed_files.repair_optimizer_groups(ds_engine, cfg)  # this run's weight decay, betas and eps, not the source's
    if not cfg.init_optimizer:
        deepspeed_files.fresh_optimizer_state(ds_engine)
