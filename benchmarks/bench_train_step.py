"""Kiln's training step time divided by a bare PyTorch loop's, same model and batch, one rank, one run.

    .venv/bin/python benchmarks/bench_train_step.py [--zero-stage 1] [--steps 30] [--dim 256 ...]

Both loops do the same work per optimizer step: ``grad_accum`` micro-batches of forward
and backward, gradient clipping, AdamW.  Kiln's step goes through the DeepSpeed engine
(``llm.engine.TrainEngine``); the bare loop is plain ``torch``.  The two alternate in
rounds inside this process so that machine noise hits both alike; the medians are
compared.  On CPU the clock is the process's CPU time (see ``timed``).  Target: ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch.distributed as dist  # noqa: E402

from llm.config import ModelConfig, TrainConfig  # noqa: E402
from llm.engine import build_engine, param_groups  # noqa: E402
from llm.model import Transformer, next_token_loss  # noqa: E402
from llm.worker import init_distributed  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def timed(fn) -> float:
    """Wall time on a GPU; on CPU this process's CPU time, which other jobs on a shared machine barely move."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - started
    started = time.process_time()
    fn()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero-stage", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the two loops")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    args = parser.parse_args()

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    model_cfg = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, seq_len=args.seq_len)
    train_cfg = TrainConfig(micro_batch=args.micro_batch, global_batch=args.global_batch, zero_stage=args.zero_stage,
                            nproc=1, precision="fp32")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    init_distributed(device)

    kiln = build_engine(model_cfg, train_cfg, args.vocab, seed=0, device=device)
    bare = Transformer(model_cfg, args.vocab, seed=0).to(device)
    optimizer = torch.optim.AdamW(param_groups(bare, train_cfg.weight_decay), lr=train_cfg.lr,
                                  betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.eps)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, args.vocab, (args.global_batch, args.seq_len + 1), generator=gen)
    micro = batch.to(device).view(-1, args.micro_batch, args.seq_len + 1)

    def kiln_step():
        kiln.set_lr(train_cfg.lr)
        kiln.train_step(batch.numpy())

    def bare_loop_step():
        bare_step(bare, optimizer, micro, train_cfg.grad_clip)

    for _ in range(args.warmup):
        kiln_step()
        bare_loop_step()
    kiln_times, bare_times = [], []
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        kiln_times += [timed(kiln_step) for _ in range(per_round)]
        bare_times += [timed(bare_loop_step) for _ in range(per_round)]
    kiln_s, bare_s = statistics.median(kiln_times), statistics.median(bare_times)
    print(f"model dim={args.dim} layers={args.layers} seq_len={args.seq_len} batch={args.global_batch} "
          f"(micro {args.micro_batch}) zero_stage={args.zero_stage} device={device.type} threads={torch.get_num_threads()}")
    print(f"kiln step  median {kiln_s * 1e3:8.2f} ms over {len(kiln_times)} steps")
    print(f"bare torch median {bare_s * 1e3:8.2f} ms over {len(bare_times)} steps")
    print(f"ratio kiln/bare = {kiln_s / bare_s:.3f}  (target <= 1.05)")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
