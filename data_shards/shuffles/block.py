"""``data.shuffle: block``: a shuffle whose working set is a bounded number of shards.

Per source and epoch: the shards are shuffled and cut into blocks of ``block_shards``;
documents are shuffled within their block and the blocks laid one after another into
the stream, which is cut into windows as in global mode (so an epoch has the same
number of samples).  A window belongs to the block holding its first token, and the
samples of the epoch take the blocks in turn, each block's windows in a random order.
A span of samples therefore reads the shards of one block, plus the first documents of
the next one for the window that crosses into it: around a block boundary a node needs
two blocks per source and the shards of one window's worth of documents of the block
after.  Like global mode it is a pure function of (documents, shards, seed, source,
epoch, seq_len, block_shards).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np

from data_shards import sample_order
from data_shards.shuffles import EpochOrder, Shuffle, SourceLayout

KEEP_BLOCK_PERMS = 4


def shard_blocks(shards: int, block_shards: int, seed: int, source: str, epoch: int) -> np.ndarray:
    """Block number of each source-local shard for this epoch."""
    shard_order = sample_order.rng_for(seed, source, epoch, "shards").permutation(shards)
    blocks = np.empty(shards, dtype=np.int64)
    blocks[shard_order] = np.arange(shards, dtype=np.int64) // block_shards
    return blocks


def block_doc_order(
    layout: SourceLayout, block_shards: int, seed: int, source: str, epoch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Documents in stream order (block by block, shuffled within each) and each one's block."""
    doc_block = shard_blocks(layout.shards, block_shards, seed, source, epoch)[layout.doc_shard]
    keys = sample_order.rng_for(seed, source, epoch, "documents").random(len(doc_block))
    order = np.lexsort((keys, doc_block)).astype(np.int64)
    return order, doc_block[order]


def window_bounds(starts: np.ndarray, ordered_blocks: np.ndarray, blocks: int, seq_len: int) -> np.ndarray:
    """First window of each block, plus the epoch's window count: block ``k`` owns windows
    ``bounds[k]:bounds[k+1]``, those whose first token lies in it."""
    first_doc = np.searchsorted(ordered_blocks, np.arange(blocks), side="left")
    count = sample_order.samples_per_epoch(int(starts[-1]), seq_len)
    bounds = np.empty(blocks + 1, dtype=np.int64)
    bounds[:-1] = np.minimum(-(-starts[first_doc] // seq_len), count)
    bounds[-1] = count
    return bounds


def block_window_perm(windows: int, seed: int, source: str, epoch: int, block: int) -> np.ndarray:
    return sample_order.rng_for(seed, source, epoch, "samples", block).permutation(windows).astype(np.int64)


class BlockEpoch(EpochOrder):
    def __init__(self, order: np.ndarray, starts: np.ndarray, bounds: np.ndarray, seed: int, source: str, epoch: int):
        super().__init__(order, starts)
        self.bounds = np.asarray(bounds)
        self._key = (seed, source, epoch)
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def _perm(self, block: int) -> np.ndarray:
        if block not in self._perms:
            if len(self._perms) >= KEEP_BLOCK_PERMS:
                self._perms.popitem(last=False)
            size = int(self.bounds[block + 1] - self.bounds[block])
            self._perms[block] = block_window_perm(size, *self._key, block)
        return self._perms[block]

    def windows(self, samples: np.ndarray) -> np.ndarray:
        blocks = np.searchsorted(self.bounds, samples, side="right") - 1
        out = np.empty(len(samples), dtype=np.int64)
        for block in np.unique(blocks).tolist():
            sel = blocks == block
            first = int(self.bounds[block])
            out[sel] = first + self._perm(block)[samples[sel] - first]
        return out


class BlockShuffle(Shuffle):
    name = "block"
    arrays = ("order", "starts", "bounds")

    def __init__(self, block_shards: int):
        if block_shards < 1:
            raise ValueError(f"data.block_shards={block_shards} must be at least 1")
        self.block_shards = int(block_shards)

    @property
    def key(self) -> str:
        return f"block-{self.block_shards}"

    def shards_at_once(self, shards: int) -> int:
        """Two blocks around a boundary, and one shard more for the window that crosses into the block
        after (it reads one or two of that block's documents unless documents are far shorter than a window)."""
        return min(shards, 2 * self.block_shards + 1)

    def blocks(self, layout: SourceLayout) -> int:
        return -(-layout.shards // self.block_shards)

    def build(self, layout: SourceLayout, seed: int, source: str, epoch: int, seq_len: int) -> dict[str, np.ndarray]:
        order, ordered_blocks = block_doc_order(layout, self.block_shards, seed, source, epoch)
        starts = sample_order.doc_starts(layout.doc_lengths, order)
        bounds = window_bounds(starts, ordered_blocks, self.blocks(layout), seq_len)
        return {"order": order, "starts": starts, "bounds": bounds}

    def open(self, arrays: Mapping[str, np.ndarray], seed: int, source: str, epoch: int) -> EpochOrder:
        return BlockEpoch(arrays["order"], arrays["starts"], arrays["bounds"], seed, source, epoch)
