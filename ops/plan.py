"""Capacity plan for a training run: parameters, FLOPs, per-GPU memory and time, as pure arithmetic.

Nothing here imports torch, so `kiln plan` answers instantly on a laptop.

Model-state bytes follow DeepSpeed's own accounting for bf16 mixed precision with
Adam: 2 bytes of bf16 parameters, and 18 more per parameter for bf16 gradients (2),
fp32 gradients (4), fp32 master weights (4) and Adam's two moments (8).  ZeRO
partitions the 18 (stage 2) and then the bf16 parameters too (stage 3, which keeps
one whole module gathered at a time).

Tensor parallelism splits every matrix (attention and MLP projections, embedding, output
layer) ``tensor_parallel`` ways and keeps the norm gains whole on every rank.  Sequence
parallelism keeps whole weights on every rank of a sequence group, and ZeRO partitions over
those ranks too (``data_parallel × sequence_parallel`` gradient ranks).
"""

from __future__ import annotations

from typing import Any, Protocol

GIB = 2**30

# Dense bf16 tensor-core peak per device, TFLOP/s (SXM parts).
PEAK_BF16_TFLOPS: dict[str, float] = {"a100": 312.0, "h100": 989.0, "h200": 989.0}

# Memory per device, GiB.
GPU_MEMORY_GIB: dict[str, float] = {"a100": 80.0, "h100": 80.0, "h200": 141.0}


class Layout(Protocol):
    """What the plan reads of ``llm.layout.ParallelLayout`` (ops sits below llm, so it names only the fields)."""

    world_size: int
    data_parallel: int
    pipeline_stages: int
    tensor_parallel: int
    sequence_parallel: int
    zero_stage: int


class ModelShape(Protocol):
    """What the plan reads of ``llm.config.ModelConfig``, which holds the model's own arithmetic
    (parameter counts, FLOPs per token); ops sits below llm, so it names only what it reads."""

    dim: int
    layers: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int

    def parameter_counts(self, vocab_size: int) -> dict[str, int]: ...

    def flops_per_token(self, vocab_size: int, seq_len: int | None = None) -> float: ...


PARAM_BYTES_BF16 = 2
OPTIMIZER_BYTES_PER_PARAM = 18  # bf16 grads 2 + fp32 grads 4 + fp32 params 4 + Adam moments 8


def parameters_per_rank(counts: dict[str, int], tensor_parallel: int) -> tuple[int, int]:
    """(parameters, largest module) one rank of a ``tensor_parallel`` split holds."""
    split = counts["total"] - counts["norms"]
    return -(-split // tensor_parallel) + counts["norms"], -(-counts["largest_module"] // tensor_parallel)


def peak_tflops_for(device_name: str) -> float | None:
    """Peak bf16 TFLOP/s for a device name such as 'NVIDIA H100 80GB HBM3' (None when unknown)."""
    name = device_name.lower()
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return peak
    return None


def model_state_bytes(total_params: int, largest_module_params: int, zero_stage: int, gpus: int) -> int:
    """Per-GPU bytes of parameters, gradients and optimizer state under a ZeRO stage (no offload)."""
    p = total_params
    if zero_stage == 0:
        return (PARAM_BYTES_BF16 + OPTIMIZER_BYTES_PER_PARAM) * p
    if zero_stage == 1:  # optimizer state and fp32 copies partitioned; bf16 grads whole
        return PARAM_BYTES_BF16 * p + 2 * p + int(16 * p / gpus)
    if zero_stage == 2:
        return PARAM_BYTES_BF16 * p + int(OPTIMIZER_BYTES_PER_PARAM * p / gpus)
    if zero_stage == 3:
        return 4 * largest_module_params + int(OPTIMIZER_BYTES_PER_PARAM * p / gpus)
    raise ValueError(f"zero_stage={zero_stage} is not one of 0, 1, 2, 3")


def activation_bytes(
    model: ModelShape,
    vocab_size: int,
    seq_len: int,
    micro_batch: int,
    activation_checkpointing: bool = False,
    tensor_parallel: int = 1,
    sequence_parallel: int = 1,
) -> int:
    """Estimated bf16 activations one rank keeps for the backward pass of one micro-batch.

    Per block and token: the inputs of both norms and their outputs, q/k/v, the
    attention output, the SwiGLU's three hidden tensors and their product, with a
    fused attention kernel (no T x T scores).  With activation checkpointing only
    each block's input is kept, plus one block's worth during its recomputation.
    The logits count twice (bf16 and the fp32 copy the loss reads).

    A sequence split holds ``seq_len / sequence_parallel`` tokens of everything (inside
    attention, every position of ``heads / sequence_parallel`` heads: the same bytes).  A
    tensor split divides the tensors between its column and row projections (q/k/v, attention
    output, SwiGLU hidden) and the logits; the norms' inputs and outputs stay whole.
    """
    dim, kv_dim, hidden = model.dim, model.n_kv_heads * model.head_dim, model.hidden_dim
    tokens = seq_len // sequence_parallel * micro_batch
    per_block = 2 * tokens * (4 * dim + (2 * dim + 2 * kv_dim + 4 * hidden) // tensor_parallel)
    blocks = model.layers * 2 * tokens * dim + per_block if activation_checkpointing else model.layers * per_block
    logits = tokens * (vocab_size // tensor_parallel) * (2 + 4)
    return blocks + logits


def plan(
    model: ModelShape,
    vocab_size: int,
    seq_len: int,
    micro_batch: int,
    global_batch: int,
    steps: int,
    layout: Layout,
    gpu: str,
    mfu: float = 0.4,
    activation_checkpointing: bool = False,
) -> dict[str, Any]:
    """Everything `kiln plan` prints, as one dict of plain numbers.

    ZeRO partitions over the gradient ranks (data × sequence parallel); each pipeline stage
    holds about ``1 / pipeline_stages`` of the parameters, each tensor-parallel rank its split.
    """
    gpu_key = gpu.lower()
    if gpu_key not in PEAK_BF16_TFLOPS:
        raise ValueError(f"gpu={gpu!r} is not known; valid: {', '.join(sorted(PEAK_BF16_TFLOPS))}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1]")
    gpus, zero_stage = layout.world_size, layout.zero_stage
    counts = model.parameter_counts(vocab_size)
    rank_params, largest = parameters_per_rank(counts, layout.tensor_parallel)
    stage_params = -(-rank_params // layout.pipeline_stages)
    gradient_ranks = layout.data_parallel * layout.sequence_parallel
    per_stage = {stage: model_state_bytes(stage_params, largest, stage, gradient_ranks) / GIB for stage in (0, 1, 2, 3)}
    activations = (
        activation_bytes(
            model,
            vocab_size,
            seq_len,
            micro_batch,
            activation_checkpointing,
            layout.tensor_parallel,
            layout.sequence_parallel,
        )
        / GIB
    )
    flops = model.flops_per_token(vocab_size, seq_len)
    tokens_per_s = gpus * PEAK_BF16_TFLOPS[gpu_key] * 1e12 * mfu / flops
    tokens_per_step = global_batch * seq_len
    total_gb = per_stage[zero_stage] + activations
    return {
        "params": counts["total"],
        "params_embedding": counts["embedding"],
        "params_largest_module": counts["largest_module"],
        "flops_per_token": flops,
        "gpu": gpu_key,
        "gpus": gpus,
        "data_parallel": layout.data_parallel,
        "pipeline_stages": layout.pipeline_stages,
        "tensor_parallel": layout.tensor_parallel,
        "sequence_parallel": layout.sequence_parallel,
        "zero_stage": zero_stage,
        "model_states_gb_by_stage": per_stage,
        "model_states_gb": per_stage[zero_stage],
        "activations_gb": activations,
        "total_gb": total_gb,
        "gpu_memory_gb": GPU_MEMORY_GIB[gpu_key],
        "fits": total_gb <= GPU_MEMORY_GIB[gpu_key],
        "mfu": mfu,
        "tokens_per_s": tokens_per_s,
        "step_time_s": tokens_per_step / tokens_per_s,
        "train_tokens": tokens_per_step * steps,
        "time_to_steps_s": tokens_per_step * steps / tokens_per_s,
    }
