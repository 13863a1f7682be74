"""Building the DeepSpeed engine around the single-device model, and one optimizer step with it."""
from __future__ import annotations

from dataclasses import dataclass

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from llm.config import ModelConfig, TrainConfig
from llm.model import Transformer, next_token_loss
from llm.parallelize import checkpoint_blocks, compile_blocks


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


def effective_zero_stage(cfg: TrainConfig, world_size: int, precision: str) -> int:
    """The ZeRO stage the engine runs.

    ZeRO partitions training state across data-parallel ranks.  With one rank and fp32 there
    is nothing to partition, and stage 0 gives the same numbers without ZeRO's flat copies of
    gradients and weights (less time and memory).  bf16 keeps the configured stage: DeepSpeed's
    stage 0 would accumulate gradients in bf16.
    """
    if cfg.pipeline_stages == 1 and cfg.data_parallel_size(world_size) == 1 and precision == "fp32":
        return 0
    return cfg.zero_stage


def deepspeed_config(cfg: TrainConfig, world_size: int, precision: str, device: torch.device,
                     load_universal: bool = False) -> dict:
    """The DeepSpeed config a Kiln train section means (``load_universal``: resume from a universal checkpoint)."""
    stage = effective_zero_stage(cfg, world_size, precision)
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
        "train_batch_size": cfg.global_batch,
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum_steps(world_size),
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


def build_module(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int, seed: int) -> nn.Module:
    """The module DeepSpeed wraps: the Transformer, or its PipelineModule form when pipelined."""
    if train_cfg.pipeline_stages > 1:
        from llm.pipeline import build_pipeline

        return build_pipeline(model_cfg, vocab_size, seed, train_cfg.pipeline_stages)
    model = Transformer(model_cfg, vocab_size, seed)
    if model_cfg.activation_checkpointing:
        checkpoint_blocks(model)
    return compile_blocks(model) if train_cfg.compile else model


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


@dataclass
class TrainEngine:
    engine: deepspeed.DeepSpeedEngine
    zero_stage: int
    pipelined: bool
    grad_accum: int
    micro_batch: int
    device: torch.device
    dp_rank: int
    dp_world: int

    def repair_after_universal_load(self, cfg: TrainConfig) -> None:
        """Undo two things DeepSpeed's universal loading does to a ZeRO-3 engine: it gives every
        parameter group the first group's settings (weight decay on norm gains), and one step
        counter tensor to all groups (so each optimizer step advances it once per group)."""
        optimizer = self.engine.optimizer
        while not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        if len(optimizer.param_groups) != 2:
            raise RuntimeError(f"expected the optimizer's two parameter groups (decay, no decay), "
                               f"found {len(optimizer.param_groups)}")
        for group, decay in zip(optimizer.param_groups, (cfg.weight_decay, 0.0)):
            group.update(weight_decay=decay, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        for state in optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, batch: np.ndarray) -> float:
        """One optimizer step on this rank's rows of the global batch; the loss averaged over all ranks."""
        rows = token_tensor(batch, self.device)
        micro = rows.view(self.grad_accum, self.micro_batch, rows.shape[-1])
        if self.pipelined:
            data = iter([(m[:, :-1], m[:, 1:]) for m in micro])
            return float(self.engine.train_batch(data_iter=data))
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for m in micro:
            loss = next_token_loss(self.engine(m[:, :-1]), m[:, 1:])
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        total /= self.grad_accum * self.dp_world
        dist.all_reduce(total)
        return float(total)

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


def build_engine(model_cfg: ModelConfig, train_cfg: TrainConfig, vocab_size: int, seed: int,
                 device: torch.device, load_universal: bool = False) -> TrainEngine:
    world_size = dist.get_world_size()
    precision = resolve_precision(train_cfg, device)
    module = build_module(model_cfg, train_cfg, vocab_size, seed)
    optimizer = torch.optim.AdamW(
        param_groups(module, train_cfg.weight_decay),
        lr=train_cfg.lr,
        betas=(train_cfg.beta1, train_cfg.beta2),
        eps=train_cfg.eps,
        fused=device.type == "cuda",
    )
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(train_cfg, world_size, precision, device, load_universal),
    )
    pipelined = train_cfg.pipeline_stages > 1
    if pipelined:
        dp_rank, dp_world = engine.grid.get_data_parallel_id(), engine.grid.get_data_parallel_world_size()
    else:
        dp_rank, dp_world = dist.get_rank(), world_size
    return TrainEngine(
        engine=engine,
        zero_stage=effective_zero_stage(train_cfg, world_size, precision),
        pipelined=pipelined,
        grad_accum=train_cfg.grad_accum_steps(world_size),
        micro_batch=train_cfg.micro_batch,
        device=device,
        dp_rank=dp_rank,
        dp_world=dp_world,
    )
