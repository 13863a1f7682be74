"""``data.shuffle: global``: Megatron's recipe, every window of the epoch in one random order.

Documents shuffled over the whole source, packed into windows, windows shuffled over the
whole epoch.  Any span of the order reads from every shard, so the working set is the corpus:
the mode for data on a local or shared filesystem.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from data_shards import sample_order
from data_shards.shuffles import EpochOrder, Shuffle, SourceLayout


class GlobalEpoch(EpochOrder):
    def __init__(self, order: np.ndarray, starts: np.ndarray, perm: np.ndarray):
        super().__init__(order, starts)
        self.perm = perm

    def windows(self, samples: np.ndarray) -> np.ndarray:
        return self.perm[samples]


class GlobalShuffle(Shuffle):
    name = "global"
    arrays = ("order", "starts", "perm")

    def build(self, layout: SourceLayout, seed: int, source: str, epoch: int, seq_len: int) -> dict[str, np.ndarray]:
        order = sample_order.epoch_doc_order(len(layout.doc_lengths), seed, source, epoch)
        starts = sample_order.doc_starts(layout.doc_lengths, order)
        count = sample_order.samples_per_epoch(int(starts[-1]), seq_len)
        return {"order": order, "starts": starts, "perm": sample_order.epoch_sample_perm(count, seed, source, epoch)}

    def open(self, arrays: Mapping[str, np.ndarray], seed: int, source: str, epoch: int) -> EpochOrder:
        return GlobalEpoch(arrays["order"], arrays["starts"], arrays["perm"])
