"""How a run's ranks divide the work: one validated object, computed once and handed to every part.

The engine, the data loader, the checkpoint code and ``kiln plan`` all read the parallel
layout from here instead of re-deriving it from ``train.pipeline_stages`` and the world
size.  ``world = data × tensor × sequence × pipeline``.  Ranks are placed with the
sequence-parallel index varying fastest, then tensor, then data, then pipeline stage (without
sequence or tensor splits that is DeepSpeed's pipe × data topology: rank ``r`` is stage
``r // data_parallel``, data-parallel rank ``r % data_parallel``), so the ranks that share one
sequence or one layer are neighbours, on one node where they fit.

Nothing here imports torch, so ``kiln plan`` stays instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm.config import ModelConfig, TrainConfig


class LayoutError(ValueError):
    """A world size and train section that do not make a layout; the message is one line."""


class ParallelLayout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(ge=1)
    data_parallel: int = Field(ge=1)
    pipeline_stages: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1, description="ranks that split each layer's projections")
    sequence_parallel: int = Field(default=1, ge=1, description="ranks that split each sequence")
    zero_stage: int = Field(ge=0, le=3, description="the ZeRO stage the engine runs (not always the configured one)")

    @model_validator(mode="after")
    def _check_product(self) -> "ParallelLayout":
        product = self.data_parallel * self.pipeline_stages * self.tensor_parallel * self.sequence_parallel
        if product != self.world_size:
            raise ValueError(
                f"data_parallel={self.data_parallel} x tensor_parallel={self.tensor_parallel} x sequence_parallel="
                f"{self.sequence_parallel} x pipeline_stages={self.pipeline_stages} = {product}, "
                f"not the world size {self.world_size}"
            )
        if self.pipeline_stages > 1 and self.zero_stage > 1:
            raise ValueError(f"zero_stage={self.zero_stage} cannot run with pipeline stages (ZeRO 0 or 1 only)")
        return self

    @classmethod
    def for_run(cls, train: TrainConfig, world_size: int, precision: Literal["fp32", "bf16"]) -> "ParallelLayout":
        """The layout of ``world_size`` ranks running ``train``; a LayoutError names what does not fit.

        One fp32 rank holding whole sequences and whole weights runs ZeRO stage 0 whatever ``train.zero_stage`` says:
        there is nothing to partition, and stage 0 gives the same numbers without ZeRO's flat
        copies of gradients and weights.  bf16 keeps the configured stage (DeepSpeed's stage 0
        would accumulate gradients in bf16).
        """
        if world_size < 1:
            raise LayoutError(f"world size {world_size} must be at least 1")
        split = {
            "train.pipeline_stages": train.pipeline_stages,
            "train.tensor_parallel": train.tensor_parallel,
            "train.sequence_parallel": train.sequence_parallel,
        }
        ranks_per_replica = train.pipeline_stages * train.tensor_parallel * train.sequence_parallel
        if world_size % ranks_per_replica:
            named = " x ".join(f"{k}={v}" for k, v in split.items() if v > 1)
            product = f" = {ranks_per_replica}" if "x" in named else ""
            raise LayoutError(f"world size {world_size} is not a multiple of {named}{product}")
        data_parallel = world_size // ranks_per_replica
        per_step = train.micro_batch * data_parallel
        if train.global_batch % per_step:
            raise LayoutError(
                f"train.global_batch={train.global_batch} is not divisible by train.micro_batch={train.micro_batch} "
                f"x {data_parallel} data-parallel ranks; choose a global_batch that is a multiple of {per_step}"
            )
        plain = train.pipeline_stages == 1 and data_parallel * train.sequence_parallel == 1 and precision == "fp32"
        return cls(
            world_size=world_size,
            data_parallel=data_parallel,
            pipeline_stages=train.pipeline_stages,
            tensor_parallel=train.tensor_parallel,
            sequence_parallel=train.sequence_parallel,
            zero_stage=0 if plain else train.zero_stage,
        )

    @property
    def pipelined(self) -> bool:
        return self.pipeline_stages > 1

    def grad_accum_steps(self, train: TrainConfig) -> int:
        """Micro-batches per rank per optimizer step, so that every step sees ``train.global_batch`` samples."""
        return train.global_batch // (train.micro_batch * self.data_parallel)

    @property
    def gradient_ranks(self) -> int:
        """Ranks DeepSpeed averages gradients and partitions ZeRO state over (its data-parallel group).

        Every rank of a sequence group holds the whole model and computes the mean loss of its own
        ``seq_len / sequence_parallel`` tokens, with the other ranks' tokens reached through attention's
        all-to-all; the mean over the group's gradients is the gradient of the whole sequence's mean loss.
        """
        return self.data_parallel * self.sequence_parallel

    def stage_of(self, rank: int) -> int:
        return rank // (self.data_parallel * self.tensor_parallel * self.sequence_parallel)

    def data_rank_of(self, rank: int) -> int:
        """Which slice of each global batch ``rank`` reads: the ranks of a sequence or tensor group read the same."""
        return (rank // (self.tensor_parallel * self.sequence_parallel)) % self.data_parallel

    def gradient_rank_of(self, rank: int) -> int:
        """``rank``'s index among its stage's gradient ranks: the ZeRO partition it holds and saves."""
        return self.data_rank_of(rank) * self.sequence_parallel + self.sequence_rank_of(rank)

    def tensor_rank_of(self, rank: int) -> int:
        return (rank // self.sequence_parallel) % self.tensor_parallel

    def sequence_rank_of(self, rank: int) -> int:
        """Which ``seq_len / sequence_parallel`` tokens of every sequence ``rank`` holds."""
        return rank % self.sequence_parallel

    def sequence_groups(self) -> list[list[int]]:
        """The ranks of each sequence group (neighbours: the sequence index varies fastest)."""
        n = self.sequence_parallel
        return [list(range(first, first + n)) for first in range(0, self.world_size, n)]

    def tensor_groups(self) -> list[list[int]]:
        """The ranks of each tensor group: those holding the slices of one layer (stride ``sequence_parallel``)."""
        return self._groups(lambda rank: (self.stage_of(rank), self.data_rank_of(rank), self.sequence_rank_of(rank)))

    def gradient_groups(self) -> list[list[int]]:
        """The ranks of each gradient group: those holding the same slice of the same stage, over which
        gradients are averaged and ZeRO partitions (DeepSpeed's data-parallel group)."""
        return self._groups(lambda rank: (self.stage_of(rank), self.tensor_rank_of(rank)))

    def _groups(self, key) -> list[list[int]]:
        groups: dict = {}
        for rank in range(self.world_size):
            groups.setdefault(key(rank), []).append(rank)
        return list(groups.values())

    def describe(self) -> str:
        parts = [f"{self.data_parallel} data-parallel"]
        if self.tensor_parallel > 1:
            parts.append(f"{self.tensor_parallel} tensor-parallel")
        if self.sequence_parallel > 1:
            parts.append(f"{self.sequence_parallel} sequence-parallel")
        if self.pipelined:
            parts.append(f"{self.pipeline_stages} pipeline stages")
        return f"{self.world_size} ranks ({' x '.join(parts)}, ZeRO-{self.zero_stage})"


def check_split(model: ModelConfig, train: TrainConfig) -> None:
    """A LayoutError (one line) when the model's shape does not split ``train.sequence_parallel`` or
    ``train.tensor_parallel`` ways: each rank needs whole attention heads (and, under tensor parallelism,
    an equal share of the MLP width; under sequence parallelism, an equal share of every sequence)."""
    for key, n in (("sequence_parallel", train.sequence_parallel), ("tensor_parallel", train.tensor_parallel)):
        shape = {"model.heads": model.heads, "model.kv_heads": model.n_kv_heads}
        shape.update({"model.seq_len": model.seq_len} if key == "sequence_parallel" else {"MLP width": model.hidden_dim})
        bad = [f"{name}={value}" for name, value in shape.items() if value % n]
        if bad:
            raise LayoutError(f"train.{key}={n} must divide {' and '.join(bad)}")
    both = train.sequence_parallel * train.tensor_parallel
    bad = [
        f"{name}={value}"
        for name, value in (("model.heads", model.heads), ("model.kv_heads", model.n_kv_heads))
        if value % both
    ]
    if bad:
        raise LayoutError(
            f"train.tensor_parallel={train.tensor_parallel} x train.sequence_parallel={train.sequence_parallel} = {both} "
            f"must divide {' and '.join(bad)}: each rank of both splits needs whole heads"
        )
