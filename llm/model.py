"""A Llama-style decoder for one device.

    tokens → embed → [Block] * layers → head (RMSNorm → linear) → logits

Each Block is pre-norm attention then a pre-norm SwiGLU feed-forward, both
residual.  Attention is causal ``scaled_dot_product_attention`` with rotary
position embeddings (the rotate-half convention of Hugging Face's Llama, so an
export needs no permutation) and grouped-query attention (``kv_heads < heads``).

Parallelism (ZeRO, pipeline stages, sequence splits, activation checkpointing) is applied around
these modules by ``llm.parallelize`` and ``llm.pipeline``, never inside them.

Initialisation is deterministic per part: the embedding, each block and the head
draw from their own generator seeded by (seed, part index), so a pipeline stage
that builds only some parts gets exactly the weights the full model would have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llm.config import ModelConfig


def part_generator(seed: int, part: int) -> torch.Generator:
    """Generator for one part: 0 is the embedding, 1..layers the blocks, layers+1 the head."""
    return torch.Generator().manual_seed((seed * 1_000_003 + part) % (2**63))


def init_normal_(weight: torch.Tensor, std: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        values = torch.empty(weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
        weight.copy_(values)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(head_dim: int, start: int, length: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [length, head_dim] for positions start .. start+length-1, in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    positions = torch.arange(start, start + length, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, D] by the position tables [T, D]."""
    cos, sin = cos.to(x.dtype)[:, None, :], sin.to(x.dtype)[:, None, :]
    return x * cos + rotate_half(x) * sin


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of q [B, T, H, D] over k, v [B, T, KV, D]; the output is [B, T, H, D].

    Each group of ``H / KV`` query heads shares one key/value head (grouped-query attention).
    """
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


class LayerKV:
    """Keys and values one attention layer has seen so far during incremental decoding."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = k if self.keys is None else torch.cat((self.keys, k), dim=2)
        self.values = v if self.values is None else torch.cat((self.values, v), dim=2)
        return self.keys, self.values


class KVCache:
    """Per-layer keys and values plus the number of positions already consumed."""

    def __init__(self, layers: int):
        self.layers = [LayerKV() for _ in range(layers)]
        self.length = 0


class Attention(nn.Module):
    """Projections, rotary embeddings and an attention core.

    ``core`` is the one step that needs every position of the sequence at once; a parallel
    layout may replace it (``llm.parallelize.split_sequences``) while the projections stay.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.dim, bias=False)
        self.core = causal_attention

    def forward(self, x, cos, sin, kv: LayerKV | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = apply_rope(self.wq(x).view(batch, length, -1, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(batch, length, -1, self.head_dim), cos, sin)
        v = self.wv(x).view(batch, length, -1, self.head_dim)
        if kv is None:
            y = self.core(q, k, v)
        else:
            y = self._decode(q, k, v, kv)
        return self.wo(y.reshape(batch, length, -1))

    def _decode(self, q, k, v, kv: LayerKV) -> torch.Tensor:
        """New queries see every cached position and the new ones up to themselves."""
        past = 0 if kv.keys is None else kv.keys.shape[2]
        k, v = kv.extend(k.transpose(1, 2), v.transpose(1, 2))
        length = q.shape[1]
        k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        if past == 0:
            return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, is_causal=True).transpose(1, 2)
        mask = torch.ones(length, past + length, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask).transpose(1, 2)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, seed: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.reset_parameters(cfg, part_generator(seed, 1 + layer_id))

    def reset_parameters(self, cfg: ModelConfig, generator: torch.Generator) -> None:
        # Projections back into the residual stream are scaled down by depth (GPT-2 / Llama practice).
        residual_std = cfg.init_std / math.sqrt(2 * cfg.layers)
        for linear, std in (
            (self.attn.wq, cfg.init_std),
            (self.attn.wk, cfg.init_std),
            (self.attn.wv, cfg.init_std),
            (self.attn.wo, residual_std),
            (self.ffn.w1, cfg.init_std),
            (self.ffn.w3, cfg.init_std),
            (self.ffn.w2, residual_std),
        ):
            init_normal_(linear.weight, std, generator)

    def forward(self, x, cos, sin, kv: LayerKV | None = None) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), cos, sin, kv)
        return h + self.ffn(self.ffn_norm(h))


class Embedding(nn.Embedding):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seed: int = 0):
        super().__init__(vocab_size, cfg.dim)
        init_normal_(self.weight, cfg.init_std, part_generator(seed, 0))


class Head(nn.Module):
    """Final norm and the projection to vocabulary logits."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seed: int = 0):
        super().__init__()
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(cfg.dim, vocab_size, bias=False)
        init_normal_(self.proj.weight, cfg.init_std, part_generator(seed, cfg.layers + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = Embedding(cfg, vocab_size, seed)
        self.layers = nn.ModuleList(Block(cfg, i, seed) for i in range(cfg.layers))
        self.head = Head(cfg, vocab_size, seed)
        if cfg.tie_embeddings:
            self.head.proj.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """Logits [B, T, vocab] for tokens [B, T] at positions ``start`` .. ``start + T - 1`` of their
        sequence (a sequence-parallel rank holds a later slice); with a cache, tokens continue the
        cached positions."""
        if cache is not None:
            start = cache.length
        x = self.embed(tokens)
        cos, sin = rope_tables(self.cfg.head_dim, start, tokens.shape[1], self.cfg.rope_theta, tokens.device)
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.head(x)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits [B, T, V] against targets [B, T], computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
