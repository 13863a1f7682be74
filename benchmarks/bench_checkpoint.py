"""How long a checkpoint save blocks training: asynchronous ÷ synchronous, same state, same run.

    .venv/bin/python benchmarks/bench_checkpoint.py [--dim 768 --layers 12 --vocab 32000] [--repeats 3]

One rank builds a model of at least 100 M parameters (AdamW, fp32, ZeRO stage 0) and saves it
through Kiln's checkpoint saver to a local folder and to a moto S3 server (its own process on
127.0.0.1).  Synchronous: the time from ``save()`` until the checkpoint is committed.
Asynchronous: what the training loop waits for - the ``save()`` call itself, plus the hold
of the next optimizer step until the snapshot has been copied - while files are written and
uploaded in the background.  Medians over the repeats; target: ratio <= 0.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch.distributed as dist  # noqa: E402

from launch.launchers.external import external_rank_environment  # noqa: E402
from llm.checkpoint_record import CheckpointRecord, DataPosition, RngState  # noqa: E402
from llm.checkpoint_save import CheckpointSaver  # noqa: E402
from llm.config import ModelConfig, TrainConfig  # noqa: E402
from llm.engine import build_engine  # noqa: E402
from llm.layout import ParallelLayout  # noqa: E402
from llm.trainer import init_distributed  # noqa: E402
from ops.storage import Location  # noqa: E402


MOTO = """
import time
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
time.sleep(1e9)
"""


def start_moto() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in a process of its own (so its work does not share this process's GIL), on a
    port it binds itself; returns the process and a bucket URL."""
    import boto3

    proc = subprocess.Popen([sys.executable, "-c", MOTO], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = f"http://127.0.0.1:{int(proc.stdout.readline())}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="kiln-bench")
    return proc, "s3://kiln-bench"


class Bench:
    def __init__(self, args):
        self.model = ModelConfig(dim=args.dim, layers=args.layers, heads=args.heads, seq_len=args.seq_len)
        self.train = TrainConfig(micro_batch=1, global_batch=1, zero_stage=0, precision="fp32", device="cpu")
        self.layout = ParallelLayout.for_run(self.train, 1, "fp32")
        self.vocab = args.vocab
        self.engine = build_engine(self.model, self.train, self.layout, args.vocab, seed=0, device=torch.device("cpu"))
        self.params = sum(p.numel() for p in self.engine.engine.module.parameters())
        self.batch = np.random.default_rng(0).integers(0, args.vocab, size=(1, args.seq_len + 1), dtype=np.uint16)
        self.held = 0.0
        self.step = 0

    def record(self) -> CheckpointRecord:
        return CheckpointRecord(
            step=self.step,
            tokens=0,
            time=0.0,
            layout=self.layout,
            precision="fp32",
            model=self.model,
            vocab_size=self.vocab,
            config_hash="bench",
            rng=[RngState.capture()],
            rng_of_rank=[0],
            data=DataPosition(url="none", fingerprint="none", consumed_samples=0, loader={}),
        )

    def train_step(self) -> None:
        self.engine.train_step(self.batch)
        self.step += 1

    def saver(self, run: Location) -> CheckpointSaver:
        saver = CheckpointSaver(self.engine.engine, run, keep=1)

        def timed_hold():
            started = time.perf_counter()
            saver.hold_until_copied()
            self.held += time.perf_counter() - started

        self.engine.before_optimizer_step = timed_hold
        return saver

    def synchronous(self, saver: CheckpointSaver) -> float:
        started = time.perf_counter()
        saver.save(self.record())
        saver.wait()
        return time.perf_counter() - started

    def asynchronous(self, saver: CheckpointSaver) -> float:
        self.held = 0.0
        started = time.perf_counter()
        saver.save(self.record())
        called = time.perf_counter() - started
        self.train_step()  # the next step's optimizer update waits for the snapshot copy
        blocked = called + self.held
        saver.wait()
        return blocked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", default="local,s3", help="comma-separated: local, s3")
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    if args.tiny:
        args.dim, args.layers, args.heads, args.vocab, args.seq_len, args.repeats = 32, 1, 2, 256, 16, 1

    os.environ.update(external_rank_environment({}))
    init_distributed(torch.device("cpu"))
    bench = Bench(args)
    bench.train_step()  # AdamW has its moments from here on
    print(
        f"model: {bench.params / 1e6:.1f} M parameters (dim={args.dim} layers={args.layers} vocab={args.vocab}), "
        f"fp32 AdamW, ZeRO-0, 1 rank; clock resolution {time.get_clock_info('perf_counter').resolution:.0e} s"
    )
    moto = None
    try:
        with tempfile.TemporaryDirectory(prefix="kiln-bench-ckpt-") as tmp:
            for target in args.targets.split(","):
                options: dict = {}
                if target == "s3":
                    moto, base = start_moto()
                    # moto assembles a multipart upload slowly; a botocore retry of the completion would fail
                    options = {"config_kwargs": {"read_timeout": 3600}}
                else:
                    base = tmp
                saver = bench.saver(Location(f"{base}/run-{target}", options))
                sync, asyn = [], []
                for _ in range(args.repeats):  # taking turns, so that machine noise hits both alike
                    sync.append(bench.synchronous(saver))
                    bench.train_step()
                    asyn.append(bench.asynchronous(saver))
                s, a = statistics.median(sync), statistics.median(asyn)
                print(
                    f"{target:>5}: synchronous save {s:7.3f} s · asynchronous save blocks the loop {a:7.3f} s · "
                    f"ratio {a / s:.4f} (target <= 0.05)"
                )
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
