"""A sequence-split training step's time divided by ZeRO-1's on the same ranks, same model and global batch.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/bench_split_step.py \
        [--steps 30] [--dim 192 --seq-len 1024 ...]

Both engines run on the same ranks: ZeRO-1 gives each rank whole sequences of its share of the global
batch; the sequence split (``train.sequence_parallel`` = ranks, ZeRO-1 over the same ranks) gives
every rank ``seq_len / ranks`` tokens of every sequence and pays two all-to-alls per attention layer
in each direction.  The engines take turns one step at a time, in a rotating order, so machine noise
hits both alike; the medians of wall-clock step times are compared (communication waits count).
Tensor parallelism has no row: training does not split layers yet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed as dist  # noqa: E402

from llm.config import ModelConfig, TrainConfig  # noqa: E402
from llm.engine import build_engine  # noqa: E402
from llm.layout import ParallelLayout  # noqa: E402
from llm.trainer import init_distributed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per engine")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device)
    world, rank = dist.get_world_size(), dist.get_rank()
    precision = "bf16" if device.type == "cuda" else "fp32"
    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, seq_len=args.seq_len)
    configs = {
        "ZeRO-1": TrainConfig(micro_batch=args.global_batch // world, global_batch=args.global_batch, zero_stage=1),
        f"SP={world}": TrainConfig(
            micro_batch=args.global_batch, global_batch=args.global_batch, zero_stage=1, sequence_parallel=world
        ),
    }
    configs = {name: cfg.model_copy(update={"precision": precision, "nproc": world}) for name, cfg in configs.items()}
    engines, rows = {}, {}
    batch = torch.randint(0, args.vocab, (args.global_batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    for name, cfg in configs.items():
        layout = ParallelLayout.for_run(cfg, world, precision)
        engines[name] = build_engine(model_cfg, cfg, layout, args.vocab, seed=0, device=device)
        per_rank = args.global_batch // layout.data_parallel
        first = layout.data_rank_of(rank) * per_rank
        rows[name] = batch[first : first + per_rank].numpy()

    def step(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()
        started = time.perf_counter()
        engines[name].train_step(rows[name])
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()  # a step ends when its slowest rank is done
        return time.perf_counter() - started

    names = list(engines)
    for _ in range(args.warmup):
        for name in names:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(step(name))
    if rank == 0:
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(
            f"{world} ranks, device={device.type}, model dim={args.dim} layers={args.layers} heads={args.heads}/"
            f"{args.kv_heads} seq_len={args.seq_len} global batch={args.global_batch}, {args.steps} steps each"
        )
        base = medians["ZeRO-1"]
        for name, median in medians.items():
            print(f"{name:8s} step median {median * 1e3:9.2f} ms   ratio to ZeRO-1 on the same ranks = {median / base:.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
