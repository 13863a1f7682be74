"""Shuffle modes: how one epoch of one source orders its documents and its windows.

A mode is a pure function of (the source's documents and the shards they live in, seed,
source name, epoch, seq_len): nothing depends on world size, worker count or restarts.
It builds an epoch's arrays once (the loader keeps them on disk under a key of their
inputs) and then answers which window of the epoch's document stream each sample reads.
Adding a mode is one new module and its case in :func:`shuffle_for`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Mapping

import numpy as np


@dataclass(frozen=True)
class SourceLayout:
    """What an order may depend on: each document's token count and the source-local shard it lives in."""

    doc_lengths: np.ndarray  # int64[docs], in manifest order
    doc_shard: np.ndarray  # int32[docs]: source-local shard number
    shards: int


class EpochOrder(ABC):
    """One epoch of one source: documents in stream order, and the window each sample reads."""

    def __init__(self, order: np.ndarray, starts: np.ndarray):
        self.order = order  # document ids in stream order
        self.starts = starts  # stream offset of each of them, plus the stream length

    @abstractmethod
    def windows(self, samples: np.ndarray) -> np.ndarray:
        """Window number in the stream of each sample number (both within the epoch)."""


class Shuffle(ABC):
    name: ClassVar[str]
    arrays: ClassVar[tuple[str, ...]]  # names of what build() returns, as kept on disk

    @property
    def key(self) -> str:
        """Everything besides data, seed and seq_len that the order depends on (loader state, cache key)."""
        return self.name

    def shards_at_once(self, shards: int) -> int | None:
        """The most of a source's ``shards`` that a node reads at one time; None when any span may read them all."""
        return None

    @abstractmethod
    def build(self, layout: SourceLayout, seed: int, source: str, epoch: int, seq_len: int) -> dict[str, np.ndarray]:
        """The epoch's arrays, named as in :attr:`arrays`."""

    @abstractmethod
    def open(self, arrays: Mapping[str, np.ndarray], seed: int, source: str, epoch: int) -> EpochOrder:
        """The epoch order over arrays from :meth:`build` (possibly memory-mapped from disk)."""


def shuffle_for(mode: str, block_shards: int) -> Shuffle:
    from data_shards.shuffles.block import BlockShuffle
    from data_shards.shuffles.global_windows import GlobalShuffle

    shuffles = {"global": GlobalShuffle, "block": lambda: BlockShuffle(block_shards)}
    if mode not in shuffles:
        raise ValueError(f"data.shuffle={mode!r} is not one of {', '.join(shuffles)}")
    return shuffles[mode]()
