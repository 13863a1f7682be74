"""Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay (WSD) or constant.

cosine    decays from ``lr`` to ``min_lr`` over the steps after warmup, reaching it at ``train.steps``.
wsd       holds ``lr`` after warmup, and decays to ``min_lr`` over the last ``decay_steps`` steps, in
          the ``decay_shape`` (linear, cosine, 1-sqrt).  Until the decay starts, the rate depends
          only on warmup and peak, so a run in its stable phase can be extended (``train.steps``
          raised on resume) or branched into a decay from any checkpoint without changing its past.
constant  holds ``lr`` after warmup.
"""

from __future__ import annotations

import math

from llm.config import TrainConfig

DECAY_SHAPES = {
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "1-sqrt": lambda progress: 1.0 - math.sqrt(progress),
}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of the optimizer step that follows ``step`` completed steps (0-based)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_start = cfg.steps - cfg.decay_steps
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start + 1) / cfg.decay_steps)  # the last step trains at min_lr
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * DECAY_SHAPES[cfg.decay_shape](progress)
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))
