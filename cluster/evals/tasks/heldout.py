"""Held-out language modelling: loss, perplexity and bits per byte on the val split, next to a unigram baseline.

The val shards' documents, in file order, are concatenated and cut into
non-overlapping windows of the model's ``seq_len + 1`` tokens; every token after the
first of a window is a target.  The baseline is the cross-entropy, on the very same
targets, of a unigram model fitted on the train shards (add-one smoothed): a model
that has learned anything beyond token frequencies is clearly below it.  Counting the
train shards does not involve the model, so a job does it once for all checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from pydantic import Field

from data_shards.errors import DataError
from data_shards.loader import eval_windows, shard_token_counts
from data_shards.manifest import Manifest, load_manifest
from cluster.evals.likelihood import window_nll
from llm.model import Transformer
from cluster.evals.tasks.base import EvalTask, Metric, ModelShape, Slice, Tally, TaskEntry, TaskInputs, TaskResult


class HeldOutEntry(TaskEntry):
    type: Literal["heldout"] = "heldout"
    name: str = "heldout"
    max_windows_per_shard: int | None = Field(default=None, ge=1, description="cap per val shard; none evaluates all")


def _no_counts() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


class HeldOutTally(Tally):
    nll: float = 0.0
    bytes: int = 0
    target_counts: np.ndarray = Field(default_factory=_no_counts)
    train_counts: np.ndarray = Field(default_factory=_no_counts)


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities (nats) from token counts."""
    smoothed = counts.astype(np.float64) + 1.0
    return np.log(smoothed / smoothed.sum())


@dataclass(frozen=True)
class _Windows:
    tokens: np.ndarray  # (n, seq_len + 1)


@dataclass(frozen=True)
class _TrainShard:
    index: int


class HeldOutTask(EvalTask):
    type = "heldout"
    entry = HeldOutEntry

    def __init__(self, name: str, inputs: TaskInputs, val: Manifest, train: Manifest, max_windows: int | None):
        super().__init__(name)
        self.data = inputs.data
        self.batch_size = inputs.batch_size
        self.val = val
        self.train = train
        self.max_windows = max_windows
        self.piece_bytes = inputs.tokenizer.piece_bytes()
        self._shard_windows: tuple[tuple[int, int], np.ndarray] | None = None  # per-worker cache of one val shard

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shard_windows": None}

    @classmethod
    def build(cls, entry: HeldOutEntry, inputs: TaskInputs) -> "HeldOutTask":
        val = load_manifest(inputs.data, "val")
        train = load_manifest(inputs.data, "train")
        return cls(entry.name, inputs, val, train, entry.max_windows_per_shard)

    def _window_counts(self, seq_len: int) -> list[int]:
        counts = [entry.tokens // (seq_len + 1) for entry in self.val.shards]
        return [min(n, self.max_windows) if self.max_windows is not None else n for n in counts]

    def slices(self, shape: ModelShape, slice_size: int) -> list[Slice]:
        if shape.vocab_size != self.train.vocab_size:
            raise DataError(
                f"{self.data}: the data's vocabulary has {self.train.vocab_size} tokens, "
                f"the checkpoint's model {shape.vocab_size}"
            )
        counts = self._window_counts(shape.seq_len)
        if sum(counts) == 0:
            raise DataError(f"{self.data}: the val shards hold no complete window of seq_len+1 = {shape.seq_len + 1} tokens")
        out = [
            Slice(task=self.name, source="val", part=shard, start=start, stop=min(start + slice_size, n))
            for shard, n in enumerate(counts)
            for start in range(0, n, slice_size)
        ]
        out += [Slice(task=self.name, source="train", part=shard, uses_model=False) for shard in range(len(self.train.shards))]
        return out

    def totals(self, shape: ModelShape) -> Tally:
        windows = sum(self._window_counts(shape.seq_len))
        return Tally(examples=windows, tokens=windows * shape.seq_len)

    def new_tally(self) -> HeldOutTally:
        return HeldOutTally()

    def _windows(self, shard: int, seq_len: int) -> np.ndarray:
        key = (shard, seq_len)
        if self._shard_windows is None or self._shard_windows[0] != key:
            self._shard_windows = (key, eval_windows(self.data, "val", shard, seq_len))
        return self._shard_windows[1]

    def batches(self, piece: Slice, model: Transformer | None) -> Iterator[_Windows | _TrainShard]:
        if piece.source == "train":
            yield _TrainShard(piece.part)
            return
        windows = self._windows(piece.part, model.cfg.seq_len)[piece.start : piece.stop]
        for first in range(0, len(windows), self.batch_size):
            yield _Windows(windows[first : first + self.batch_size])

    def score(self, model: Transformer | None, batch: _Windows | _TrainShard) -> HeldOutTally:
        if isinstance(batch, _TrainShard):
            counts = shard_token_counts(self.data, "train", batch.index, self.train.vocab_size)
            return HeldOutTally(train_counts=counts)
        nll, tokens = window_nll(model, batch.tokens, batch_size=len(batch.tokens))
        targets = batch.tokens[:, 1:]
        return HeldOutTally(
            examples=len(batch.tokens),
            tokens=tokens,
            nll=nll,
            bytes=int(self.piece_bytes[targets].sum()),
            target_counts=np.bincount(targets.reshape(-1), minlength=self.train.vocab_size).astype(np.int64),
        )

    def compute(self, tally: HeldOutTally) -> TaskResult:
        unigram_nll = -float(tally.target_counts @ unigram_log_probs(tally.train_counts))
        loss, unigram_loss = tally.nll / tally.tokens, unigram_nll / tally.tokens
        bits = 1 / math.log(2) / max(tally.bytes, 1)
        return TaskResult(
            name=self.name,
            type=self.type,
            metrics=[
                Metric(key="loss", label="loss (nats/token)", value=loss),
                Metric(key="perplexity", label="perplexity", value=math.exp(loss), format=".2f"),
                Metric(key="bits_per_byte", label="bits per byte", value=tally.nll * bits),
                Metric(key="unigram_loss", label="unigram baseline loss", value=unigram_loss),
                Metric(
                    key="unigram_perplexity", label="unigram baseline perplexity", value=math.exp(unigram_loss), format=".2f"
                ),
                Metric(key="unigram_bits_per_byte", label="unigram baseline bits per byte", value=unigram_nll * bits),
                Metric(key="tokens", label="target tokens", value=tally.tokens, format=",d"),
                Metric(key="bytes", label="target bytes", value=tally.bytes, format=",d"),
                Metric(key="examples", label="windows", value=tally.examples, format=",d"),
                Metric(key="val_shards", label="val shards", value=len(self.val.shards), format=",d"),
            ],
        )
