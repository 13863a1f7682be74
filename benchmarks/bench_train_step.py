"""Kiln's training step time divided by a bare PyTorch loop's, same model and batch, one rank, one run.

    .venv/bin/python benchmarks/bench_train_step.py [--zero-stages 0,1,2] [--steps 60] [--dim 192 ...] [--tiny]

Both loops do the same work per optimizer step: ``grad_accum`` micro-batches of forward
and backward, gradient clipping, AdamW.  Kiln's step goes through the DeepSpeed engine
(``llm.engine.TrainEngine``); the bare loop is plain ``torch``.  The loops take turns one
step at a time, in a rotating order, so that machine noise hits all alike; the medians are
compared.  On CPU the default clock is the process's CPU time (see ``timed``).  Target: ratio <= 1.02.
With one fp32 rank every configured stage runs as stage 0 (``llm.layout.ParallelLayout.for_run``).

``--split-ranks`` times the splits instead, on 2 ranks (started here with torchrun, on CPU under gloo):
a sequence split (SP=2) and a tensor split (TP=2) of the same model and global batch, each divided
by the step time of ZeRO-1 data parallelism on the same 2 ranks.  Wall clock: the splits' cost is
their collectives, which a rank's CPU time leaves out while it waits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed as dist  # noqa: E402

from launch.launchers.external import external_rank_environment  # noqa: E402
from llm.config import ModelConfig, TrainConfig  # noqa: E402
from llm.engine import build_engine, param_groups  # noqa: E402
from llm.layout import ParallelLayout  # noqa: E402
from llm.model import Transformer, next_token_loss  # noqa: E402
from llm.trainer import init_distributed  # noqa: E402


def bare_step(model, optimizer, micro: torch.Tensor, clip: float) -> float:
    total = 0.0
    for m in micro:
        loss = next_token_loss(model(m[:, :-1]), m[:, 1:])
        (loss / len(micro)).backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / len(micro)


def timed(fn, clock: str) -> float:
    """Seconds of ``fn`` by wall clock (GPU work synchronised) or by this process's CPU time, which other
    jobs on a shared machine barely move."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    now = time.process_time if clock == "cpu" else time.perf_counter
    started = now()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return now() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--zero-stages",
        default="0,1,2",
        help="comma-separated ZeRO stages; each gets its own engine, timed against the same bare loop",
    )
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None, help="default: wall on GPU, process CPU time on CPU")
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    parser.add_argument("--split-ranks", action="store_true", help="SP=2 and TP=2 on 2 ranks against ZeRO-1 on the same ranks")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.dim, args.layers, args.heads, args.seq_len, args.vocab = 2, 1, 32, 1, 2, 16, 256
    if args.split_ranks:
        if "RANK" not in os.environ:
            with tempfile.TemporaryDirectory(prefix="bench-torchrun-") as logs:  # torchrun's error files
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                cmd += ["--log-dir", logs, *sys.argv]
                code = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
            sys.exit(code)
        split_ranks(args)
        return
    stages = [int(z) for z in args.zero_stages.split(",")]

    os.environ.update(external_rank_environment({}))
    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, seq_len=args.seq_len)
    train_cfgs = {
        z: TrainConfig(micro_batch=args.micro_batch, global_batch=args.global_batch, zero_stage=z, nproc=1, precision="fp32")
        for z in stages
    }
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device)
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")

    engines = {
        z: build_engine(model_cfg, cfg, ParallelLayout.for_run(cfg, 1, "fp32"), args.vocab, seed=0, device=device)
        for z, cfg in train_cfgs.items()
    }
    reference = next(iter(train_cfgs.values()))
    bare = Transformer(model_cfg, args.vocab, seed=0).to(device)
    optimizer = torch.optim.AdamW(
        param_groups(bare, reference.weight_decay),
        lr=reference.lr,
        betas=(reference.beta1, reference.beta2),
        eps=reference.eps,
    )
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.global_batch, args.seq_len + 1), generator=gen)
    micro = batch.to(device).view(-1, args.micro_batch, args.seq_len + 1)

    def kiln_step(z):
        engines[z].set_lr(reference.lr)
        engines[z].train_step(batch.numpy())

    def bare_loop_step():
        bare_step(bare, optimizer, micro, reference.grad_clip)

    loops = {"bare": bare_loop_step, **{f"zero{z}": (lambda z=z: kiln_step(z)) for z in stages}}
    for _ in range(args.warmup):
        for fn in loops.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for step in range(args.steps):  # one step of each loop per round, in a rotating order
        for name in names[step % len(names) :] + names[: step % len(names)]:
            times[name].append(timed(loops[name], clock))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"model dim={args.dim} layers={args.layers} seq_len={args.seq_len} batch={args.global_batch} "
        f"(micro {args.micro_batch}) device={device.type} threads={torch.get_num_threads()} clock={clock} "
        f"steps={len(times['bare'])} per loop"
    )
    print(f"bare torch        median {medians['bare'] * 1e3:8.2f} ms")
    for z in stages:
        name = f"zero{z}"
        print(
            f"kiln ZeRO-{z} step  median {medians[name] * 1e3:8.2f} ms   ratio kiln/bare = "
            f"{medians[name] / medians['bare']:.3f}  (target <= 1.02; runs as stage {engines[z].layout.zero_stage})"
        )
    dist.destroy_process_group()


def split_ranks(args) -> None:
    """One of 2 ranks: ZeRO-1 data parallelism, SP=2 and TP=2 engines of one model, one step of each in turn."""
    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, seq_len=args.seq_len)
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device)
    clock = args.clock or "wall"
    splits = {"ZeRO-1": {}, "SP=2": {"sequence_parallel": 2}, "TP=2": {"tensor_parallel": 2}}
    engines = {}
    for name, split in splits.items():
        cfg = TrainConfig(
            micro_batch=args.micro_batch, global_batch=args.global_batch, zero_stage=1, precision="fp32", **split
        )
        layout = ParallelLayout.for_run(cfg, 2, "fp32")
        engines[name] = build_engine(model_cfg, cfg, layout, args.vocab, seed=0, device=device)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.global_batch, args.seq_len + 1), generator=gen)

    def step(name):
        engine = engines[name]
        rows = args.global_batch // engine.layout.data_parallel
        first = engine.layout.data_rank_of(dist.get_rank()) * rows
        engine.train_step(batch[first : first + rows].numpy())

    for _ in range(args.warmup):
        for name in engines:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in engines}
    names = list(engines)
    for i in range(args.steps):  # the same rotating order on both ranks, so their collectives pair up
        for name in names[i % len(names) :] + names[: i % len(names)]:
            dist.barrier()
            times[name].append(timed(lambda name=name: step(name), clock))
    medians = {name: statistics.median(t) for name, t in times.items()}
    if dist.get_rank() == 0:
        print(
            f"model dim={args.dim} layers={args.layers} seq_len={args.seq_len} batch={args.global_batch} "
            f"(micro {args.micro_batch}) device={device.type} ranks=2 clock={clock} steps={args.steps} per engine"
        )
        for name, engine in engines.items():
            print(
                f"kiln {name:<6} step  median {medians[name] * 1e3:8.2f} ms   ratio to ZeRO-1 = "
                f"{medians[name] / medians['ZeRO-1']:.3f}  ({engine.layout.describe()})"
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
