"""Which dimension tensor parallelism splits each parameter along, by its ``Transformer.state_dict()`` name.

Column-parallel projections (q, k, v, SwiGLU gate and up) split their output rows (dim 0),
row-parallel ones (attention output, SwiGLU down) their input columns (dim 1); the embedding
and the output layer split the vocabulary (dim 0).  Norm gains are whole on every rank.
Rank ``r`` of ``n`` holds ``torch.tensor_split(tensor, n, dim)[r]`` (an uneven vocabulary: the
first ranks one row more), so a parameter's slices in rank order concatenate back to it: the same
rule builds a rank's model, merges a checkpoint and re-slices it.

Nothing here imports torch.distributed: checkpoints of any layout are read with it in a plain process.
"""

from __future__ import annotations

import torch

_COLUMN = ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight", "ffn.w1.weight", "ffn.w3.weight")
_ROW = ("attn.wo.weight", "ffn.w2.weight")
_VOCAB = ("embed.weight", "head.proj.weight")


def split_dim(name: str) -> int | None:
    """The dimension ``name`` is split along, or None for a parameter every rank holds whole."""
    if name in _VOCAB or name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def shard(name: str, tensor: torch.Tensor, rank: int, ranks: int) -> torch.Tensor:
    """Rank ``rank``'s slice of the whole parameter ``name`` (the whole tensor when it is not split)."""
    dim = split_dim(name)
    if dim is None or ranks == 1:
        return tensor
    return torch.tensor_split(tensor, ranks, dim)[rank]


def merge(name: str, slices: list[torch.Tensor]) -> torch.Tensor:
    """The whole parameter ``name`` from its slices in rank order (rank 0's copy when it is not split)."""
    dim = split_dim(name)
    return slices[0] if dim is None else torch.cat(slices, dim)


def row_range(rows: int, rank: int, ranks: int) -> tuple[int, int]:
    """The rows ``[start, end)`` of ``rows`` that rank ``rank`` of ``ranks`` holds (``torch.tensor_split``'s bounds)."""
    size, extra = divmod(rows, ranks)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)
