"""FLOPs per token and the device peak that turns measured throughput into TFLOP/s and MFU."""

from __future__ import annotations

import torch

from llm.config import ModelConfig
from ops import plan


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward, attention included); see ``ModelConfig.flops_per_token``."""
    return cfg.flops_per_token(vocab_size, seq_len)


def device_peak_tflops(override: float | None = None) -> float | None:
    """Peak bf16 TFLOP/s of this process's device: the override, the GPU table, or None (CPU)."""
    if override is not None:
        return override
    if torch.cuda.is_available():
        return plan.peak_tflops_for(torch.cuda.get_device_name())
    return None


def throughput(
    flops_token: float, tokens: int, seconds: float, devices: int, peak_tflops: float | None
) -> tuple[float, float | None]:
    """Achieved TFLOP/s per device and MFU (None without a peak) for ``tokens`` processed in ``seconds``."""
    tflops = flops_token * tokens / max(seconds, 1e-12) / devices / 1e12
    return tflops, (tflops / peak_tflops if peak_tflops else None)
