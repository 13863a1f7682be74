"""Checkpoints under ``RUN_URL/checkpoints/`` (their layout: ``ops.checkpoints``): finding committed
ones, reading them, pruning.

``COMMITTED`` holds the :class:`~llm.checkpoint_record.CheckpointRecord`, which lists every
file with its size and sha256; readers load only listed files, after checking them.
Saving is ``llm.checkpoint_save``; resuming a training run is ``llm.checkpoint_resume``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Iterator

import torch
from pydantic import ValidationError

from llm import checkpoint_files
from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord, FileEntry
from ops import storage
from ops.checkpoints import checkpoints_url, commit_url, latest_url, parse_step, step_name, step_url
from ops.storage import Place


def step_dirs(run: Place) -> list[int]:
    """Steps that have a folder, committed or not, ascending."""
    names = storage.list_names(checkpoints_url(run))
    return sorted(s for s in (parse_step(n) for n in names) if s is not None)


def committed_steps(run: Place) -> list[int]:
    return [s for s in step_dirs(run) if storage.exists(commit_url(run, s))]


def latest_committed_step(run: Place) -> int | None:
    """The step ``latest`` names when it is committed; otherwise the newest committed step, with a warning."""
    pointer_url = latest_url(run)
    pointer = None
    if storage.exists(pointer_url):
        pointer = storage.read_text(pointer_url).strip()
        named = parse_step(pointer)
        if named is not None and storage.exists(commit_url(run, named)):
            return named
    committed = committed_steps(run)
    fallback = committed[-1] if committed else None
    if pointer is not None or fallback is not None:
        warnings.warn(
            f"{pointer_url} {'names ' + repr(pointer) + ', which is not committed' if pointer is not None else 'is missing'}; "
            f"using {step_name(fallback) if fallback is not None else 'no checkpoint'}",
            stacklevel=2,
        )
    return fallback


def resume_candidates(run: Place) -> list[int]:
    """Committed steps in the order a resume tries them: the one ``latest`` names, then older ones, newest first."""
    first = latest_committed_step(run)
    if first is None:
        return []
    return [first] + [s for s in reversed(committed_steps(run)) if s < first]


def read_commit(run: Place, step: int) -> CheckpointRecord:
    """The record COMMITTED holds for a committed step: layout, model config, data position, files."""
    url = commit_url(run, step)
    try:
        return CheckpointRecord.model_validate_json(storage.read_bytes(url))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{url} is not a checkpoint record: {where + ': ' if where else ''}{first['msg']}") from None


def steps_to_prune(all_steps: list[int], committed: list[int], keep: int) -> list[int]:
    """Folders to delete: committed ones beyond the newest ``keep``, and abandoned partial saves older
    than the newest committed one.  The newest committed step and anything newer (a save that may
    be in progress) are never chosen."""
    if not committed:
        return []
    newest = committed[-1]
    kept = set(sorted(committed)[-max(1, keep) :])
    return [s for s in all_steps if s < newest and s not in kept]


def remove_step(run: Place, step: int) -> None:
    """Delete a step folder, its marker first, so a half-deleted folder never looks committed."""
    storage.remove(commit_url(run, step))
    storage.remove(step_url(run, step), recursive=True)


def prune(run: Place, keep: int) -> list[int]:
    doomed = steps_to_prune(step_dirs(run), committed_steps(run), keep)
    for step in doomed:
        remove_step(run, step)
    return doomed


@contextlib.contextmanager
def local_files(run: Place, step: int, entries: list[FileEntry]) -> Iterator[str]:
    """A local folder holding ``entries`` of a committed step, each checked against its size and sha256.

    A local run's step folder is checked in place; on an object store the files are fetched
    into a private temporary folder (removed afterwards), checked as they arrive.
    """
    url = step_url(run, step)
    if storage.is_local(url):
        problems = [p for e in entries if (p := checkpoint_files.verify(url, e))]
        if problems:
            raise CheckpointError(problems[0])
        yield storage.filesystem(url)[1]
        return
    with tempfile.TemporaryDirectory(prefix="kiln-checkpoint-") as tmp:
        folder = os.path.join(tmp, step_name(step))
        problems = [p for e in entries if (p := checkpoint_files.fetch(url, e, folder))]
        if problems:
            raise CheckpointError(problems[0])
        yield folder


def _committed(run: Place, step: int | None) -> int:
    if step is None:
        step = latest_committed_step(run)
        if step is None:
            raise FileNotFoundError(f"{checkpoints_url(run)} holds no committed checkpoint")
    elif not storage.exists(commit_url(run, step)):
        raise FileNotFoundError(f"{step_url(run, step)} is not a committed checkpoint")
    return step


def load_model_state(run: Place, step: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """Consolidated fp32 weights of a committed checkpoint in ``Transformer.state_dict()`` naming.

    Works for every ZeRO stage and pipeline layout, in a plain process without
    torch.distributed.  ``step=None`` takes the latest committed step.  Every file is checked
    against the record and read weights only; a damaged or unsafe one is a CheckpointError.
    """
    from llm import deepspeed_files

    step = _committed(run, step)
    record = read_commit(run, step)
    with local_files(run, step, record.files) as folder:
        return step, deepspeed_files.consolidate(folder, record)


def load_model(run: Place, step: int | None = None):
    """A ``Transformer`` in eval mode holding a committed checkpoint's weights, and its step."""
    from llm.model import Transformer

    step, state = load_model_state(run, step)
    record = read_commit(run, step)
    model = Transformer(record.model, record.vocab_size)
    if model.cfg.tie_embeddings:
        state.setdefault("head.proj.weight", state.get("embed.weight"))
        state.setdefault("embed.weight", state.get("head.proj.weight"))
    model.load_state_dict(state)
    return step, model.eval()
