"""Held-out loss of a model over packed token windows (the per-rank math of `kiln eval`)."""
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
            batch = torch.from_numpy(windows[start:start + batch_size].astype(np.int64)).to(device)
            logits = model(batch[:, :-1])
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll.double())
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return total, count
