"""Sampling text from a checkpoint with a KV cache, to read what a model has learned so far."""

from __future__ import annotations

import torch

from llm.checkpoint import load_model, read_commit
from llm.model import KVCache, Transformer
from ops import storage


def next_token(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> int:
    """Sample from the last position's logits [vocab]; temperature 0 is greedy."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.numel():
        cutoff = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < cutoff, float("-inf"))
    return int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator))


@torch.no_grad()
def sample_tokens(
    model: Transformer,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    stop_id: int | None = None,
) -> list[int]:
    """Continue ``prompt`` by up to ``max_tokens`` tokens, one forward step per token through the cache.

    When the cache reaches the trained context length, it is rebuilt from the last
    half-context of tokens, so positions never exceed what the model was trained on.
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    model.eval()
    context = model.cfg.seq_len
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    tokens = list(prompt)
    out: list[int] = []
    cache = KVCache(model.cfg.layers)
    logits = model(torch.tensor([tokens[-context:]], device=device), cache=cache)[0, -1]
    for _ in range(max_tokens):
        token = next_token(logits.cpu(), temperature, top_k, generator)
        if stop_id is not None and token == stop_id:
            break
        out.append(token)
        tokens.append(token)
        if cache.length >= context:
            cache = KVCache(model.cfg.layers)
            logits = model(torch.tensor([tokens[-(context // 2) :]], device=device), cache=cache)[0, -1]
        else:
            logits = model(torch.tensor([[token]], device=device), cache=cache)[0, -1]
    return out


def generate(
    run: storage.Place,
    prompt: str,
    max_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    step: int | None = None,
) -> str:
    """The text a committed checkpoint writes after ``prompt`` (the continuation only).

    The prompt is read as the start of a document (it follows an end-of-sequence
    token, as every document did in training); sampling stops at the next one.
    """
    from data_shards.tokenizer import Tokenizer

    step, model = load_model(run, step)
    tokenizer = Tokenizer.load(storage.location(run).with_url(read_commit(run, step).data.url))
    ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
    return tokenizer.decode(sample_tokens(model, ids, max_tokens, temperature, top_k, seed, tokenizer.eos_id))
