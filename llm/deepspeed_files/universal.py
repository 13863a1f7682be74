"""Changing a checkpoint's layout: the route it takes, and its conversion to DeepSpeed's universal form.

DeepSpeed's converter (``deepspeed.checkpoint.ds_to_universal``) runs in a child process
(it starts worker processes of its own, which a rank holding gloo threads must not fork):
``python -m llm.deepspeed_files.to_universal STEP_DIR OUT_DIR``, with every load weights only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Literal

from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord
from llm.deepspeed_files import reshard
from llm.layout import ParallelLayout

Route = Literal["universal", "plain"]
UNSAFE_EXIT = 3  # the converter's exit code for a file that holds more than weights


def reshape_route(saved: CheckpointRecord, layout: ParallelLayout) -> Route | None:
    """How a committed checkpoint loads into an engine of ``layout``.

    None: DeepSpeed loads it as saved (same layout, or stage 0 on both sides, which
    partitions nothing, with the same tensor split).  Otherwise it goes through per-parameter (universal) state:
    ``"universal"`` into a ZeRO engine by DeepSpeed, ``"plain"`` into a stage-0 engine
    (``reshard``, which slices whole parameters for a tensor split).  A tensor split's slices are merged
    only from, and re-sliced only into, ZeRO-0 engines.  A layout change that no route covers is a CheckpointError.
    """
    before = saved.layout
    same = before.world_size == layout.world_size and before.zero_stage == layout.zero_stage
    if (before.pipelined or layout.pipelined) and not (same and before.pipeline_stages == layout.pipeline_stages):
        raise CheckpointError(
            f"checkpoint step {saved.step} was saved by {before.world_size} ranks with pipeline_stages="
            f"{before.pipeline_stages}; a pipelined run resumes only on the same world size and layout "
            f"(now {layout.world_size} ranks, pipeline_stages={layout.pipeline_stages})"
        )
    resliced = before.tensor_parallel != layout.tensor_parallel
    if resliced and (
        (before.tensor_parallel > 1 and before.zero_stage > 0) or (layout.tensor_parallel > 1 and layout.zero_stage > 0)
    ):
        raise CheckpointError(
            f"checkpoint step {saved.step} was saved with tensor_parallel={before.tensor_parallel} at ZeRO-"
            f"{before.zero_stage}; a change of tensor split resumes only where the split side runs ZeRO-0 "
            f"(one data-parallel fp32 rank), not on tensor_parallel={layout.tensor_parallel} at ZeRO-{layout.zero_stage}"
        )
    if same and not resliced:
        return None
    if before.zero_stage == 0 and layout.zero_stage == 0 and not resliced:
        return None
    if before.zero_stage == 0 and saved.precision == "bf16":
        raise CheckpointError(
            f"checkpoint step {saved.step} is a bf16 ZeRO-0 checkpoint of {before.world_size} ranks; it resumes "
            f"only as bf16 ZeRO-0 (now {layout.world_size} ranks, zero_stage={layout.zero_stage})"
        )
    return "universal" if layout.zero_stage >= 1 or saved.precision == "bf16" else "plain"


def to_universal(step_dir: str, out_parent: str, tag: str, saved: CheckpointRecord) -> None:
    """Convert the DeepSpeed step folder ``step_dir`` (local, verified) into ``out_parent/tag``."""
    os.makedirs(out_parent, exist_ok=True)
    if saved.layout.zero_stage == 0:
        reshard.zero0_to_universal(step_dir, out_parent, tag, saved.layout.tensor_parallel)
        return
    cmd = [sys.executable, "-m", "llm.deepspeed_files.to_universal", step_dir, os.path.join(out_parent, tag)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == UNSAFE_EXIT:
        raise CheckpointError(proc.stderr.strip().splitlines()[-1])
    if proc.returncode != 0:
        raise RuntimeError(f"converting {step_dir} to a universal checkpoint failed: {proc.stderr.strip()[-500:]}")
    reshard.fit_every_zero_stage(os.path.join(out_parent, tag))
