"""Ranks measuring the memory one training step of a 16,384-token sequence takes (started through torchrun
by test_sequence_memory.py).

Usage: ``python -m torch.distributed.run --nproc_per_node N tests/llm/sequence_memory_ranks.py SEQUENCE_PARALLEL OUT_JSON``.

The measure is the kernel's: each rank resets its resident-set high-water mark (``/proc/self/clear_refs``),
runs one step, and reports ``VmHWM`` minus the ``VmRSS`` it started from, so the weights, optimizer state
and libraries loaded before the step are not counted; what the step adds is its activations, gradients
and communication buffers.  Run with ``MALLOC_MMAP_THRESHOLD_`` low, so every large tensor is its own
mapping that goes back to the kernel when freed and the resident set follows the live tensors.
Rank 0 writes every rank's figure to OUT_JSON.
"""

import gc
import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from llm.config import ModelConfig, TrainConfig
from llm.engine import build_engine
from llm.layout import ParallelLayout
from llm.trainer import init_distributed

VOCAB = 512
MODEL = ModelConfig(dim=32, layers=2, heads=4, kv_heads=2, seq_len=16384, ffn_hidden=256)


def status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # "5": reset the peak resident set size to the current one


def main(sequence_parallel: int, out: str) -> None:
    device = torch.device("cpu")
    init_distributed(device)
    world = dist.get_world_size()
    data_parallel = world // sequence_parallel
    train = TrainConfig(
        micro_batch=1, global_batch=data_parallel, zero_stage=1, sequence_parallel=sequence_parallel, warmup_steps=0
    )
    layout = ParallelLayout.for_run(train, world, "fp32")
    engine = build_engine(MODEL, train, layout, VOCAB, seed=0, device=device)
    rows = np.random.default_rng(layout.data_rank_of(dist.get_rank())).integers(
        0, VOCAB, size=(1, MODEL.seq_len + 1), dtype=np.uint16
    )
    engine.train_step(rows)  # the first step creates gradients and optimizer state: not activations
    gc.collect()
    dist.barrier()
    reset_peak()
    before = status_kib("VmRSS")
    engine.train_step(rows)
    step_kib = status_kib("VmHWM") - before
    figures: list = [None] * world
    dist.all_gather_object(figures, step_kib)
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"step_kib": figures}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
