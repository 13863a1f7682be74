"""Which accelerator DeepSpeed should use in this process and the Ray workers it starts."""

from __future__ import annotations

import os


def use_cpu_accelerator_without_cuda() -> None:
    """Tell DeepSpeed to use the CPU when there is no CUDA device, instead of guessing aloud."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
