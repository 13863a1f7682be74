"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr`` at the last step."""

from __future__ import annotations

import math

from llm.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of the optimizer step that follows ``step`` completed steps (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
