"""Checkpoint bytes are data, never code: every load is ``torch.load(weights_only=True)``.

``weights_only`` unpickles tensors, containers and plain values only; anything else a pickle
asks for (a function to call, a class to build) must be on an allow-list.  DeepSpeed's files
need three small classes of its own, listed here; a file that asks for anything more is
refused with one line naming it.

DeepSpeed reads its files with ``torch.load(weights_only=False)``: through its checkpoint
engine (which Kiln replaces, see ``engine_io``) and directly in its universal-checkpoint and
conversion code.  :func:`deepspeed_loads_weights_only` covers the direct calls for as long as
Kiln has DeepSpeed load on its behalf.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from typing import Any, Iterator

import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from llm.checkpoint_files import CheckpointError

# What DeepSpeed 0.19's checkpoint files pickle besides tensors and containers: the loss scaler
# and ZeRO stage in optimizer files, and the fragment addresses of ZeRO's flat partitions.
SAFE_GLOBALS = [LossScaler, ZeroStageEnum, fragment_address]

_torch_load = torch.load  # the real one, also while deepspeed_loads_weights_only() stands in for it


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that asks the unpickler for more than tensors and the allow-listed types."""


def _reason(error: Exception) -> str:
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    reason = match.group(1) if match else str(error).splitlines()[0]
    return reason.split(" was not an allowed global")[0].rstrip(". ")


def load_weights_only(source: Any, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a path or binary file, weights only; an UnsafeCheckpointError when it holds code."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return _torch_load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "checkpoint file")
        raise UnsafeCheckpointError(
            f"{name}: refusing to load it: it asks to unpickle more than tensors ({_reason(error)})"
        ) from None


@contextlib.contextmanager
def deepspeed_loads_weights_only() -> Iterator[None]:
    """Within the block, every ``torch.load`` of this process (DeepSpeed's included) is :func:`load_weights_only`."""

    def weights_only(f, map_location=None, *args, **kwargs):
        return load_weights_only(f, map_location if map_location is not None else "cpu")

    previous = torch.load
    torch.load = weights_only
    try:
        yield
    finally:
        torch.load = previous
