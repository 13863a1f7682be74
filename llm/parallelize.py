"""Training-time transformations applied around the single-device model (never inside it)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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
