"""Training-time transformations applied around the single-device model (never inside it)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm.layout import ParallelLayout
from llm.model import Transformer


def checkpoint_blocks(model: Transformer) -> Transformer:
    """Recompute each block's activations in the backward pass instead of storing them.

    The blocks' ``forward`` is wrapped in place, so parameter names (and so
    checkpoints and exports) are unchanged.
    """
    for block in model.layers:
        _wrap_forward(block)
    return model


def compile_blocks(model: Transformer, partitioned_weights: bool = False) -> Transformer:
    """``torch.compile`` each block in place (names unchanged).

    The blocks are identical in structure, so one compiled graph serves all of them;
    this fuses the norms, rotary embeddings and SwiGLU that dominate time besides the matmuls.

    ``partitioned_weights`` (ZeRO-3): every linear and norm then carries DeepSpeed's gather and
    release hooks, which dynamo traces into the block's graph; their guards name each module, so
    each block compiles its own graphs, and dynamo's default of 8 recompiles per function would
    send every block past the eighth back to eager.  The limit is raised to cover every module.
    """
    if partitioned_weights:
        modules = sum(1 for _ in model.modules())
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * modules)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 8 * modules)
    for block in model.layers:
        block.compile()
    return model


def recompute(function, *args):
    """``function(*args)`` keeping only its inputs for backward, which runs it again (PyTorch's
    non-reentrant checkpoint, used for plain and pipelined models alike)."""
    return checkpoint(function, *args, use_reentrant=False)


def _wrap_forward(module: nn.Module) -> None:
    inner = module.forward

    def forward(*args):
        return recompute(inner, *args)

    module.forward = forward


class UlyssesAttention(nn.Module):
    """The attention core of a rank holding ``seq_len / N`` tokens of every sequence (DeepSpeed Ulysses).

    An all-to-all over the N ranks of ``group`` trades the sequence split for a head split: each
    rank receives every position of ``heads / N`` query heads and ``kv_heads / N`` key/value heads
    (head ``h`` and its key/value head land on the same rank), runs the one-device core on them,
    and a second all-to-all returns its own positions of every head.  Rotary embeddings are applied
    before the exchange, at the positions of the full sequence.
    """

    def __init__(self, local: Callable, group: dist.ProcessGroup):
        super().__init__()
        from deepspeed.sequence.layer import DistributedAttention

        # Tensors are [batch, positions, heads, head_dim]: scatter the heads (2), gather the positions (1).
        self.exchange = DistributedAttention(local, group, scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.exchange(q, k, v, 0)


def sequence_group(layout: ParallelLayout) -> dist.ProcessGroup:
    """Collective (every rank makes every group): the process group of this rank's sequence split."""
    mine = None
    for ranks in layout.sequence_groups():
        group = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            mine = group
    return mine


def split_sequences(model: Transformer, group: dist.ProcessGroup) -> Transformer:
    """Let each rank of ``group`` hold a slice of every sequence: attention cores are swapped for
    :class:`UlyssesAttention`, which holds no parameters (names and checkpoints are unchanged)."""
    for block in model.layers:
        block.attn.core = UlyssesAttention(block.attn.core, group)
    return model
