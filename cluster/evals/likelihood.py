"""How likely a model finds token sequences: the summed NLL of packed windows (the held-out loss) and the
log-likelihood of a continuation after its context (multiple choice)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from llm.model import Transformer


@torch.no_grad()
def window_nll(model: Transformer, windows: np.ndarray, batch_size: int = 8) -> tuple[float, int]:
    """Summed next-token NLL in nats of ``windows[:, 1:]`` given ``windows[:, :-1]``, and the token count."""
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must have shape (n, seq_len + 1) with seq_len >= 1, got {windows.shape}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    count = 0
    try:
        for start in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[start : start + batch_size].astype(np.int64)).to(device)
            logits = model(batch[:, :-1])
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll.double())
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return total, count


@torch.no_grad()
def continuation_logprobs(model: Transformer, requests: list[tuple[list[int], list[int]]], batch_size: int = 8) -> list[float]:
    """Summed log-likelihood (nats) of each continuation's tokens after its context.

    A request is ``(context_tokens, continuation_tokens)``.  As lm-evaluation-harness does,
    the sequence is cut from the left to the model's ``seq_len + 1`` tokens, its last token
    is dropped to form the input, and the continuation's tokens are scored at the end.
    Batches are right-padded, which leaves every real position's logits unchanged under
    causal attention.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = model.cfg.seq_len
    out: list[float] = []
    try:
        for first in range(0, len(requests), batch_size):
            chunk = requests[first : first + batch_size]
            inputs, targets = [], []
            for context, continuation in chunk:
                if not continuation or len(continuation) > limit:
                    raise ValueError(f"a continuation must hold 1 to seq_len={limit} tokens, got {len(continuation)}")
                window = (list(context) + list(continuation))[-(limit + 1) :]
                inputs.append(window[:-1])
                targets.append(list(continuation))
            width = max(len(x) for x in inputs)
            batch = torch.zeros((len(inputs), width), dtype=torch.long)
            for row, tokens in enumerate(inputs):
                batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logits = model(batch.to(device))
            for row, (tokens, continuation) in enumerate(zip(inputs, targets)):
                end = len(tokens)
                scored = F.log_softmax(logits[row, end - len(continuation) : end].float(), dim=-1)
                wanted = torch.tensor(continuation, dtype=torch.long, device=device)[:, None]
                out.append(float(scored.gather(1, wanted).sum()))
    finally:
        model.train(was_training)
    return out
