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


def step_dirs(run_url: str, storage_options: dict | None = None) -> list[int]:
    """Steps that have a folder, committed or not, ascending."""
    names = storage.list_names(checkpoints_url(run_url), storage_options)
    return sorted(s for s in (parse_step(n) for n in names) if s is not None)


def committed_steps(run_url: str, storage_options: dict | None = None) -> list[int]:
    return [s for s in step_dirs(run_url, storage_options) if storage.exists(commit_url(run_url, s), storage_options)]


def latest_committed_step(run_url: str, storage_options: dict | None = None) -> int | None:
    """The step ``latest`` names when it is committed; otherwise the newest committed step, with a warning."""
    pointer_url = latest_url(run_url)
    pointer = None
    if storage.exists(pointer_url, storage_options):
        pointer = storage.read_text(pointer_url, storage_options).strip()
        named = parse_step(pointer)
        if named is not None and storage.exists(commit_url(run_url, named), storage_options):
            return named
    committed = committed_steps(run_url, storage_options)
    fallback = committed[-1] if committed else None
    if pointer is not None or fallback is not None:
        warnings.warn(
            f"{pointer_url} {'names ' + repr(pointer) + ', which is not committed' if pointer is not None else 'is missing'}; "
            f"using {step_name(fallback) if fallback is not None else 'no checkpoint'}",
            stacklevel=2,
        )
    return fallback


def resume_candidates(run_url: str, storage_options: dict | None = None) -> list[int]:
    """Committed steps in the order a resume tries them: the one ``latest`` names, then older ones, newest first."""
    first = latest_committed_step(run_url, storage_options)
    if first is None:
        return []
    return [first] + [s for s in reversed(committed_steps(run_url, storage_options)) if s < first]


def read_commit(run_url: str, step: int, storage_options: dict | None = None) -> CheckpointRecord:
    """The record COMMITTED holds for a committed step: layout, model config, data position, files."""
    url = commit_url(run_url, step)
    try:
        return CheckpointRecord.model_validate_json(storage.read_bytes(url, storage_options))
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


def remove_step(run_url: str, step: int, storage_options: dict | None = None) -> None:
    """Delete a step folder, its marker first, so a half-deleted folder never looks committed."""
    storage.remove(commit_url(run_url, step), storage_options)
    storage.remove(step_url(run_url, step), storage_options, recursive=True)


def prune(run_url: str, keep: int, storage_options: dict | None = None) -> list[int]:
    doomed = steps_to_prune(step_dirs(run_url, storage_options), committed_steps(run_url, storage_options), keep)
    for step in doomed:
        remove_step(run_url, step, storage_options)
    return doomed


@contextlib.contextmanager
def local_files(run_url: str, step: int, entries: list[FileEntry], storage_options: dict | None = None) -> Iterator[str]:
    """A local folder holding ``entries`` of a committed step, each checked against its size and sha256.

    A local run's step folder is checked in place; on an object store the files are fetched
    into a private temporary folder (removed afterwards), checked as they arrive.
    """
    url = step_url(run_url, step)
    if storage.is_local(url):
        problems = [p for e in entries if (p := checkpoint_files.verify(url, e, storage_options))]
        if problems:
            raise CheckpointError(problems[0])
        yield storage.filesystem(url, storage_options)[1]
        return
    with tempfile.TemporaryDirectory(prefix="kiln-checkpoint-") as tmp:
        folder = os.path.join(tmp, step_name(step))
        problems = [p for e in entries if (p := checkpoint_files.fetch(url, e, folder, storage_options))]
        if problems:
            raise CheckpointError(problems[0])
        yield folder


def _committed(run_url: str, step: int | None, storage_options: dict | None) -> int:
    if step is None:
        step = latest_committed_step(run_url, storage_options)
        if step is None:
            raise FileNotFoundError(f"{checkpoints_url(run_url)} holds no committed checkpoint")
    elif not storage.exists(commit_url(run_url, step), storage_options):
        raise FileNotFoundError(f"{step_url(run_url, step)} is not a committed checkpoint")
    return step


def load_model_state(
    run_url: str, step: int | None = None, storage_options: dict | None = None
) -> tuple[int, dict[str, torch.Tensor]]:
    """Consolidated fp32 weights of a committed checkpoint in ``Transformer.state_dict()`` naming.

    Works for every ZeRO stage and pipeline layout, in a plain process without
    torch.distributed.  ``step=None`` takes the latest committed step.  Every file is checked
    against the record and read weights only; a damaged or unsafe one is a CheckpointError.
    """
    from llm import deepspeed_files

    step = _committed(run_url, step, storage_options)
    record = read_commit(run_url, step, storage_options)
    with local_files(run_url, step, record.files, storage_options) as folder:
        return step, deepspeed_files.consolidate(folder, record)


def load_model(run_url: str, step: int | None = None, storage_options: dict | None = None):
    """A ``Transformer`` in eval mode holding a committed checkpoint's weights, and its step."""
    from llm.model import Transformer

    step, state = load_model_state(run_url, step, storage_options)
    record = read_commit(run_url, step, storage_options)
    model = Transformer(record.model, record.vocab_size)
    if model.cfg.tie_embeddings:
        state.setdefault("head.proj.weight", state.get("embed.weight"))
        state.setdefault("embed.weight", state.get("head.proj.weight"))
    model.load_state_dict(state)
    return step, model.eval()
