"""DeepSpeed's own save and load, with Kiln's checkpoint engine in the place of ``torch.save``/``torch.load``.

``engine.save_checkpoint`` builds every state dict of the rank and hands each to its
checkpoint engine together with a file path.  Kiln's engine writes nothing: it remembers the
state in a :class:`~llm.snapshot.Snapshot`, which the background writer copies and writes
later.  ``engine.load_checkpoint`` reads through the same engine, weights only, and only
files the resume has verified.
"""

from __future__ import annotations

import os
import tempfile

import torch
from deepspeed.runtime.checkpoint_engine import CheckpointCommitInfo
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

from llm.checkpoint_files import CheckpointError
from llm.config import TrainConfig
from llm.deepspeed_files.safe_load import deepspeed_loads_weights_only, load_weights_only
from llm.snapshot import Snapshot


class KilnCheckpointEngine(CheckpointEngine):
    def __init__(self) -> None:
        super().__init__(None)
        self.name = "KilnCheckpointEngine"
        self.snapshot: Snapshot | None = None
        self.verified: set[str] | None = None  # absolute paths a load may read; None: any (a local conversion)
        self._folder = ""

    def create(self, info: CheckpointCommitInfo) -> None:
        self._folder = os.path.join(info.save_dir, str(info.tag))

    def save(self, state_dict, path: str) -> None:
        if self.snapshot is None:
            raise RuntimeError("DeepSpeed saved a checkpoint outside llm.deepspeed_files.snapshot()")
        self.snapshot.add(os.path.relpath(path, self._folder), state_dict)

    def load(self, path: str, map_location=None):
        if self.verified is not None and os.path.abspath(path) not in self.verified:
            raise CheckpointError(f"DeepSpeed asked for {path}, which is not among the files this rank verified")
        return load_weights_only(path, map_location if map_location is not None else "cpu")

    def commit(self, info: CheckpointCommitInfo) -> bool:
        return True

    def preserves_storage_sharing(self) -> bool:
        return False  # so DeepSpeed does not clone tensors first: the snapshot copies only what files cover


def use_kiln_checkpoint_engine(ds_engine) -> None:
    ds_engine.checkpoint_engine = KilnCheckpointEngine()


def snapshot(ds_engine, tag: str) -> Snapshot:
    """Collective: this rank's part of DeepSpeed's checkpoint ``tag``, remembered in memory, nothing written."""
    engine: KilnCheckpointEngine = ds_engine.checkpoint_engine
    engine.snapshot = Snapshot()
    try:
        # DeepSpeed makes its folders and copies its recovery scripts into save_dir: a private scratch folder.
        with tempfile.TemporaryDirectory(prefix="kiln-save-") as scratch:
            ds_engine.save_checkpoint(scratch, tag=tag, client_state={}, save_latest=False)
        return engine.snapshot
    finally:
        engine.snapshot = None


def load_as_saved(ds_engine, load_dir: str, tag: str, verified: list[str]) -> None:
    """Collective: restore weights and optimizer state from ``load_dir/tag``, saved on this very layout."""
    engine: KilnCheckpointEngine = ds_engine.checkpoint_engine
    engine.verified = {os.path.abspath(p) for p in verified}
    try:
        with deepspeed_loads_weights_only():
            path, _ = ds_engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
    finally:
        engine.verified = None
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint {tag} in {load_dir}")


def load_universal(ds_engine, load_dir: str, tag: str) -> None:
    """Collective: restore a ZeRO engine built with ``checkpoint.load_universal`` from the universal form."""
    with deepspeed_loads_weights_only():
        path, _ = ds_engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the universal checkpoint {os.path.join(load_dir, tag)}")


def _torch_optimizer(ds_engine) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO's, bf16's), which holds the per-parameter state."""
    optimizer = ds_engine.optimizer
    while not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def fresh_optimizer_state(ds_engine) -> None:
    """Forget the per-parameter optimizer state a load brought (moments, step counts), as a new engine
    has none: every ZeRO stage creates it lazily at the first step, so the next step starts afresh."""
    _torch_optimizer(ds_engine).state.clear()


def repair_optimizer_groups(ds_engine, cfg: TrainConfig) -> None:
    """Undo two things DeepSpeed's universal loading does to a ZeRO engine: it gives every parameter
    group the first group's settings (weight decay on norm gains), and one step counter tensor to all
    groups (so each optimizer step advances it once per group)."""
    optimizer = _torch_optimizer(ds_engine)
    if len(optimizer.param_groups) != 2:
        raise RuntimeError(
            f"expected the optimizer's two parameter groups (decay, no decay), found {len(optimizer.param_groups)}"
        )
    for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
        group.update(weight_decay=decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
