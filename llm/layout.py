"""How a run's ranks divide the work: one validated object, computed once and handed to every part.

The engine, the data loader, the checkpoint code and ``kiln plan`` all read the parallel
layout from here instead of re-deriving it from ``train.pipeline_stages`` and the world
size.  Ranks are laid out as DeepSpeed's pipe × data topology does it: the data-parallel
index varies fastest, so rank ``r`` is stage ``r // data_parallel``, data-parallel rank
``r % data_parallel``.  Tensor parallelism has its field already; only 1 is accepted today.

Nothing here imports torch, so ``kiln plan`` stays instant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm.config import TrainConfig


class LayoutError(ValueError):
    """A world size and train section that do not make a layout; the message is one line."""


class ParallelLayout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    world_size: int = Field(ge=1)
    data_parallel: int = Field(ge=1)
    pipeline_stages: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1, le=1, description="room for tensor parallelism; 1 until it exists")
    zero_stage: int = Field(ge=0, le=3, description="the ZeRO stage the engine runs (not always the configured one)")

    @model_validator(mode="after")
    def _check_product(self) -> "ParallelLayout":
        product = self.data_parallel * self.pipeline_stages * self.tensor_parallel
        if product != self.world_size:
            raise ValueError(
                f"data_parallel={self.data_parallel} x pipeline_stages={self.pipeline_stages} x "
                f"tensor_parallel={self.tensor_parallel} = {product}, not the world size {self.world_size}"
            )
        if self.pipeline_stages > 1 and self.zero_stage > 1:
            raise ValueError(f"zero_stage={self.zero_stage} cannot run with pipeline stages (ZeRO 0 or 1 only)")
        return self

    @classmethod
    def for_run(cls, train: TrainConfig, world_size: int, precision: Literal["fp32", "bf16"]) -> "ParallelLayout":
        """The layout of ``world_size`` ranks running ``train``; a LayoutError names what does not fit.

        One fp32 data-parallel rank runs ZeRO stage 0 whatever ``train.zero_stage`` says:
        there is nothing to partition, and stage 0 gives the same numbers without ZeRO's flat
        copies of gradients and weights.  bf16 keeps the configured stage (DeepSpeed's stage 0
        would accumulate gradients in bf16).
        """
        if world_size < 1:
            raise LayoutError(f"world size {world_size} must be at least 1")
        if world_size % train.pipeline_stages:
            raise LayoutError(f"world size {world_size} is not a multiple of train.pipeline_stages={train.pipeline_stages}")
        data_parallel = world_size // train.pipeline_stages
        per_step = train.micro_batch * data_parallel
        if train.global_batch % per_step:
            raise LayoutError(
                f"train.global_batch={train.global_batch} is not divisible by train.micro_batch={train.micro_batch} "
                f"x {data_parallel} data-parallel ranks; choose a global_batch that is a multiple of {per_step}"
            )
        plain = train.pipeline_stages == 1 and data_parallel == 1 and precision == "fp32"
        return cls(
            world_size=world_size,
            data_parallel=data_parallel,
            pipeline_stages=train.pipeline_stages,
            zero_stage=0 if plain else train.zero_stage,
        )

    @property
    def pipelined(self) -> bool:
        return self.pipeline_stages > 1

    def grad_accum_steps(self, train: TrainConfig) -> int:
        """Micro-batches per rank per optimizer step, so that every step sees ``train.global_batch`` samples."""
        return train.global_batch // (train.micro_batch * self.data_parallel)

    def stage_of(self, rank: int) -> int:
        return rank // (self.data_parallel * self.tensor_parallel)

    def data_rank_of(self, rank: int) -> int:
        return (rank // self.tensor_parallel) % self.data_parallel

    def describe(self) -> str:
        parts = [f"{self.data_parallel} data-parallel"]
        if self.pipelined:
            parts.append(f"{self.pipeline_stages} pipeline stages")
        return f"{self.world_size} ranks ({' x '.join(parts)}, ZeRO-{self.zero_stage})"
