"""Training-time transformations applied around the single-device model (never inside it)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm import tensor_split
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
    return process_group(layout.sequence_groups())


def split_sequences(model: Transformer, group: dist.ProcessGroup) -> Transformer:
    """Let each rank of ``group`` hold a slice of every sequence: attention cores are swapped for
    :class:`UlyssesAttention`, which holds no parameters (names and checkpoints are unchanged)."""
    for block in model.layers:
        block.attn.core = UlyssesAttention(block.attn.core, group)
    return model


def process_group(groups: list[list[int]]) -> dist.ProcessGroup:
    """Collective (every rank makes every group, in the same order): the group holding this rank."""
    mine = None
    for ranks in groups:
        group = dist.new_group(ranks)
        if dist.get_rank() in ranks:
            mine = group
    return mine


class _CopyToTensorGroup(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the tensor group (each rank's slice of the
    next projection contributed part of the input's gradient)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumOverTensorGroup(torch.autograd.Function):
    """Forward sums the ranks' partial outputs; backward hands every rank the whole gradient."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits whose vocabulary is split over the tensor group.

    Each rank holds logits [N, V_rank] of its vocabulary rows ``[start, start + V_rank)``; the
    maximum, the sum of exponentials and the target's logit are reduced over the group, so every
    rank gets the one-process loss without any rank holding all the logits.
    """

    @staticmethod
    def forward(ctx, logits, targets, start, group):
        peak = logits.max(dim=-1).values
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - peak[:, None]
        exp = shifted.exp()
        total = exp.sum(dim=-1)
        dist.all_reduce(total, group=group)
        inside = (targets >= start) & (targets < start + logits.shape[-1])
        index = (targets - start).masked_fill(~inside, 0)
        target = shifted.gather(1, index[:, None]).squeeze(1).masked_fill(~inside, 0.0)
        dist.all_reduce(target, group=group)
        ctx.save_for_backward(exp / total[:, None], index, inside)
        return (total.log() - target).mean()

    @staticmethod
    def backward(ctx, grad):
        softmax, index, inside = ctx.saved_tensors
        rows = torch.arange(softmax.shape[0], device=softmax.device)
        softmax[rows, index] -= inside.to(softmax.dtype)
        return softmax * (grad / softmax.shape[0]), None, None, None


class ModelParallelUnit:
    """The groups DeepSpeed reads from a Megatron-style ``mpu``: its model-parallel group is the tensor
    group (gradient norms add the slices' squares over it, and checkpoints are saved per slice as
    ``mp_rank_TT``), its data-parallel group the gradient group (it averages gradients and
    partitions ZeRO state over those ranks only)."""

    def __init__(self, layout: ParallelLayout):
        self.tensor = process_group(layout.tensor_groups())
        self.gradient_ranks = next(g for g in layout.gradient_groups() if dist.get_rank() in g)
        self.gradient = process_group(layout.gradient_groups())

    def get_model_parallel_group(self):
        return self.tensor

    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(self.tensor)

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(self.tensor)

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_data_parallel_group(self):
        return self.gradient

    def get_data_parallel_rank(self) -> int:
        return dist.get_rank(self.gradient)

    def get_data_parallel_world_size(self) -> int:
        return dist.get_world_size(self.gradient)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.gradient_ranks


def _take_slice(module: nn.Module, attr: str, name: str, rank: int, ranks: int) -> None:
    whole = getattr(module, attr)
    part = nn.Parameter(tensor_split.shard(name, whole.detach(), rank, ranks).clone())
    part.tensor_model_parallel = True  # DeepSpeed's norm and clipping count it on every rank of the group
    setattr(module, attr, part)


def _wrap(module: nn.Module, before=None, after=None) -> None:
    inner = module.forward

    def forward(x, *args):
        y = inner(before(x) if before else x, *args)
        return after(y) if after else y

    module.forward = forward


def split_tensors(model: Transformer, group: dist.ProcessGroup) -> Transformer:
    """Let each rank of ``group`` hold a slice of every matrix (``llm.tensor_split`` says which dimension).

    q/k/v and the SwiGLU gate and up projections are column-parallel: each rank computes whole heads
    (and an equal share of the MLP width) from the whole residual stream.  The attention output and
    SwiGLU down projections are row-parallel: each rank's partial product is summed over the group,
    so the residual stream, the norms and their gains are whole (and equal) on every rank.  The
    embedding and output layer split the vocabulary: a token's row is looked up on the rank holding
    it and summed over the group, and the output is each rank's share of the logits, which
    :func:`vocab_parallel_loss` reads.  Names are unchanged; the shapes are the slices.
    """
    rank, ranks = dist.get_rank(group), dist.get_world_size(group)

    def copy(x):
        return _CopyToTensorGroup.apply(x, group)

    def reduce(x):
        return _SumOverTensorGroup.apply(x, group)

    owners = dict(model.named_modules())
    for name, _ in list(model.named_parameters()):
        if tensor_split.split_dim(name) is not None:
            owner, _, attr = name.rpartition(".")
            _take_slice(owners[owner], attr, name, rank, ranks)
    if model.cfg.tie_embeddings:
        model.head.proj.weight = model.embed.weight
    for block in model.layers:
        _wrap(block.attn, before=copy)
        _wrap(block.attn.wo, after=reduce)
        _wrap(block.ffn, before=copy)
        _wrap(block.ffn.w2, after=reduce)
    _wrap(model.head.proj, before=copy)
    start, end = tensor_split.row_range(model.vocab_size, rank, ranks)
    embed = model.embed

    def lookup(tokens: torch.Tensor) -> torch.Tensor:
        outside = (tokens < start) | (tokens >= end)
        rows = F.embedding((tokens - start).masked_fill(outside, 0), embed.weight)
        return reduce(rows.masked_fill(outside[..., None], 0.0))

    embed.forward = lookup
    return model


def vocab_parallel_loss(vocab_size: int, group: dist.ProcessGroup) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``next_token_loss`` for the logits of a :func:`split_tensors` model: this rank's vocabulary share."""
    start, _ = tensor_split.row_range(vocab_size, dist.get_rank(group), dist.get_world_size(group))

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = logits.float().reshape(-1, logits.shape[-1])
        return _VocabParallelCrossEntropy.apply(flat, targets.reshape(-1), start, group)

    return loss
