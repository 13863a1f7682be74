"""DeepSpeed's checkpoint file names, and which of them each rank reads back.

mp_rank_SS_model_states.pt                     module and engine state of pipeline stage SS, or of
                                               tensor slice SS (00 when neither splits); ZeRO 0-2
zero_pp_rank_D_mp_rank_SS_model_states.pt      the same, per data-parallel rank D; ZeRO-3
[bf16_]zero_pp_rank_D_mp_rank_SS_optim_states.pt   data-parallel rank D's optimizer partition
layer_LL-model_states.pt                       pipeline layer LL, written by its stage's first
                                               data-parallel rank
"""

from __future__ import annotations

import re

from llm.checkpoint_record import FileEntry
from llm.layout import ParallelLayout

MODEL_STATES = "mp_rank_00_model_states.pt"
LAYER_FILE = re.compile(r"^layer_(\d+)-model_states\.pt$")
BF16_OPTIMIZER_FILE = re.compile(r"^bf16_zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_PARTITION_FILE = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(?:optim|model)_states\.pt$")
_STAGE_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def rank_files(files: list[FileEntry], layout: ParallelLayout, rank: int) -> list[FileEntry]:
    """The files DeepSpeed loads on ``rank`` when a checkpoint of ``layout`` resumes on the same layout:
    its stage's model states and layers, the first stage's model states, and its own partitions - never
    another rank's partition."""
    # DeepSpeed's model-parallel index names a file's pipeline stage or its tensor slice (never both: see llm.config).
    stage = layout.stage_of(rank) if layout.pipelined else layout.tensor_rank_of(rank)
    data_rank = layout.gradient_rank_of(rank)

    def needed(entry: FileEntry) -> bool:
        if match := _PARTITION_FILE.match(entry.path):
            return (int(match.group(1)), int(match.group(2))) == (data_rank, stage)
        if match := _STAGE_FILE.match(entry.path):
            # DeepSpeed's state-dict loader opens the first of these files on every rank (to check their
            # count against the saved model-parallel size) before it reads the rank's own stage's file.
            return int(match.group(1)) in (0, stage)
        if LAYER_FILE.match(entry.path):
            return layout.stage_of(entry.rank) == stage
        return True  # a file of a kind not listed above: better fetched than missed

    return [entry for entry in files if needed(entry)]
