"""Building the DeepSpeed engine around the single-device model, and one optimizer step with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llm.config import ModelConfig, TrainConfig
from llm.layout import ParallelLayout
from llm.model import Transformer, next_token_loss
from llm.parallelize import (
    ModelParallelUnit,
    checkpoint_blocks,
    compile_blocks,
    sequence_group,
    split_sequences,
    split_tensors,
    vocab_parallel_loss,
)


def resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """'bf16' or 'fp32': auto means bf16 on GPU and fp32 on CPU."""
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def deepspeed_config(
    cfg: TrainConfig, layout: ParallelLayout, precision: str, device: torch.device, load_universal: bool = False
) -> dict:
    """The DeepSpeed config a Kiln train section means on ``layout`` (``load_universal``: resume from a
    universal checkpoint)."""
    stage = layout.zero_stage
    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(
            overlap_comm=device.type == "cuda",
            contiguous_gradients=True,
            reduce_bucket_size=int(5e8),
            allgather_bucket_size=int(5e8),
        )
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
    config = {
        # DeepSpeed counts every gradient rank as data-parallel, the ranks of a sequence split included.
        "train_batch_size": cfg.micro_batch * layout.grad_accum_steps(cfg) * layout.gradient_ranks,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": layout.grad_accum_steps(cfg),
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return config


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (projections, embeddings); none on norm gains."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_module(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    layout: ParallelLayout,
    vocab_size: int,
    seed: int,
    mpu: ModelParallelUnit | None = None,
) -> nn.Module:
    """The module DeepSpeed wraps: the Transformer, or its PipelineModule form when pipelined
    (``mpu``: the groups of a tensor split, which then slices every matrix)."""
    if layout.pipelined:
        from llm.pipeline import build_pipeline

        return build_pipeline(model_cfg, vocab_size, seed, layout.pipeline_stages)
    model = Transformer(model_cfg, vocab_size, seed)
    if mpu is not None:
        split_tensors(model, mpu.get_model_parallel_group())
    if layout.sequence_parallel > 1:
        split_sequences(model, sequence_group(layout))
    if model_cfg.activation_checkpointing:
        checkpoint_blocks(model)
    if not train_cfg.compile:
        return model
    if layout.zero_stage == 3:
        # DeepSpeedEngine.compile does the same: NVTX ranges around ZeRO-3's hooks break the traced graphs.
        deepspeed.utils.nvtx.enable_nvtx = False
    return compile_blocks(model, partitioned_weights=layout.zero_stage == 3)


_SAME_WIDTH_SIGNED = {np.dtype(np.uint16): (torch.int16, 0xFFFF), np.dtype(np.uint32): (torch.int32, 0xFFFFFFFF)}


def token_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """int64 tokens on ``device`` from a loader batch in the shards' unsigned dtype.

    The narrow values travel (as the signed type of the same width, which every device
    supports) and are widened where they land.
    """
    if batch.dtype not in _SAME_WIDTH_SIGNED:
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.int64)).to(device)
    signed, mask = _SAME_WIDTH_SIGNED[batch.dtype]
    narrow = torch.from_numpy(np.ascontiguousarray(batch)).view(signed).to(device, non_blocking=True)
    return narrow.to(torch.int64) & mask


def _no_hold() -> None:
    pass


def _keep(_loss: float) -> bool:
    return True


class SkippableAdamW(torch.optim.AdamW):
    """AdamW that does nothing while ``skipping`` is set: a skipped update leaves weights, moments and the step
    count as they were.  DeepSpeed's optimizers call this one's step once per parameter group or partition, so
    the switch holds for a whole engine step."""

    skipping = False

    def step(self, closure=None):
        if self.skipping:
            return None
        return super().step(closure)


@dataclass
class TrainEngine:
    engine: deepspeed.DeepSpeedEngine
    layout: ParallelLayout
    grad_accum: int
    micro_batch: int
    device: torch.device
    optimizer: SkippableAdamW
    sequence_rank: int = 0
    # The loss of a micro-batch from the module's output: a tensor split's output is this rank's share
    # of the vocabulary, whose loss needs the other ranks' shares.
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = next_token_loss
    reduce_loss: bool = True  # False on one rank, where an all-reduce only costs time
    # Called right before each optimizer step (before the whole batch when pipelined: DeepSpeed's
    # schedule steps inside it): the checkpoint saver holds training there while a snapshot still
    # reads the live weights and optimizer state.
    before_optimizer_step: Callable[[], None] = _no_hold
    # Asked with the step's loss (every rank's mean, so every rank answers alike) right before the optimizer
    # step; False leaves the weights and optimizer state as they were.  A pipelined step has updated them by
    # the time its loss is known: there it can only raise.
    keep_update: Callable[[float], bool] = _keep

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batch: np.ndarray) -> float:
        """One optimizer step on this rank's rows of the global batch; the loss averaged over all ranks."""
        rows = token_tensor(batch, self.device)
        micro = rows.view(self.grad_accum, self.micro_batch, rows.shape[-1])
        if self.layout.pipelined:
            data = iter([(m[:, :-1], m[:, 1:]) for m in micro])
            self.before_optimizer_step()
            loss = float(self.engine.train_batch(data_iter=data))
            self.keep_update(loss)
            return loss
        # A rank of a sequence split holds positions [start, start + length) of every sequence.
        length = (rows.shape[-1] - 1) // self.layout.sequence_parallel
        start = self.sequence_rank * length
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        mean = 0.0
        for i, m in enumerate(micro):
            inputs, targets = m[:, start : start + length], m[:, start + 1 : start + length + 1]
            loss = self.loss_of(self.engine(inputs, start=start), targets)
            self.engine.backward(loss)
            total += loss.detach().float()
            if i == self.grad_accum - 1:  # DeepSpeed steps the optimizer at the last micro-batch only
                # Equal token counts: the mean of means is the mean (the ranks of a tensor group hold the same loss).
                total /= self.grad_accum * self.layout.world_size
                if self.reduce_loss:
                    dist.all_reduce(total)
                mean = float(total)
                self.before_optimizer_step()
                self.optimizer.skipping = not self.keep_update(mean)
            self.engine.step()
        self.optimizer.skipping = False
        return mean

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


def build_engine(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    layout: ParallelLayout,
    vocab_size: int,
    seed: int,
    device: torch.device,
    load_universal: bool = False,
) -> TrainEngine:
    """The DeepSpeed engine of this rank, saving and loading through Kiln's checkpoint engine."""
    from llm.deepspeed_files import use_kiln_checkpoint_engine

    precision = resolve_precision(train_cfg, device)
    mpu = ModelParallelUnit(layout) if layout.tensor_parallel > 1 else None
    module = build_module(model_cfg, train_cfg, layout, vocab_size, seed, mpu)
    optimizer = SkippableAdamW(
        param_groups(module, train_cfg.weight_decay),
        lr=train_cfg.lr,
        betas=(train_cfg.beta1, train_cfg.beta2),
        eps=train_cfg.eps,
        fused=device.type == "cuda",
    )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(train_cfg, layout, precision, device, load_universal),
        mpu=mpu,
    )
    use_kiln_checkpoint_engine(engine)
    alone = dist.get_world_size() == 1
    if alone and layout.zero_stage == 0:
        # Stage 0 all-reduces the gradients in flattened buckets after the last backward of a step, even
        # over one rank, where it changes nothing: its flatten, copy and collective cost ~3% of a CPU step.
        engine.enable_backward_allreduce = False
    if layout.pipelined:
        rank = dist.get_rank()
        placed = (engine.grid.get_stage_id(), engine.grid.get_data_parallel_id())
        if placed != (layout.stage_of(rank), layout.data_rank_of(rank)):
            raise RuntimeError(
                f"DeepSpeed placed rank {rank} at (stage, data rank) {placed}; the layout expects "
                f"{(layout.stage_of(rank), layout.data_rank_of(rank))}"
            )
    return TrainEngine(
        engine=engine,
        layout=layout,
        grad_accum=layout.grad_accum_steps(train_cfg),
        micro_batch=train_cfg.micro_batch,
        device=device,
        sequence_rank=layout.sequence_rank_of(dist.get_rank()),
        loss_of=vocab_parallel_loss(vocab_size, mpu.get_model_parallel_group()) if mpu else next_token_loss,
        optimizer=optimizer,
        reduce_loss=not alone,
    )
