"""Read throughput: GlobalBatchLoader tokens/s ÷ plain pyarrow IPC read of the same shards,
and the reader's peak resident memory on a small and a large corpus.

Both reads run side by side in one process on a warm page cache:

* pyarrow:        ``pa.ipc.open_file(pa.OSFile(shard)).read_all()`` and the token values as numpy
                  (zero-copy), every shard: the issue's baseline
* pyarrow→windows: the same, then copied out as ``seq_len + 1`` windows in file order (the shards'
                  token dtype), i.e. batches without any shuffling
* reader:         ``GlobalBatchLoader(seq_len, global_batch).next_batch()`` for one epoch of the global
                  order (random windows across all shards, batches in the shards' token dtype), after
                  the index is built

Memory: a child process per corpus size resets its peak-RSS mark (``/proc/self/clear_refs``),
reads one epoch, and reports how far the peak rose; the small corpus is a quarter of the shards.

    .venv/bin/python benchmarks/bench_read.py [DATA_URL] [--seq-len 2048 --global-batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_shards.loader import GlobalBatchLoader
from data_shards.manifest import Manifest, load_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".cache" / "bench" / "data-given"


def pyarrow_read(manifest: Manifest) -> int:
    tokens = 0
    for i in range(len(manifest.shards)):
        table = pa.ipc.open_file(pa.OSFile(manifest.shard_url(i))).read_all()
        for chunk in table.column("tokens").chunks:
            tokens += len(chunk.values.to_numpy())
    return tokens


def pyarrow_windows(manifest: Manifest, seq_len: int) -> int:
    tokens = 0
    for i in range(len(manifest.shards)):
        table = pa.ipc.open_file(pa.OSFile(manifest.shard_url(i))).read_all()
        values = np.concatenate([c.values.to_numpy() for c in table.column("tokens").chunks])
        n = len(values) // (seq_len + 1)
        windows = values[: n * (seq_len + 1)].reshape(n, seq_len + 1).copy()
        tokens += windows.shape[0] * seq_len
    return tokens


def loader_epoch(loader: GlobalBatchLoader, samples: int) -> int:
    tokens = 0
    for _ in range(samples // loader.global_batch):
        batch = loader.next_batch()
        tokens += batch.shape[0] * loader.seq_len
    return tokens


def timed(fn, *args) -> tuple[int, float]:
    started = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - started


def epoch_samples(loader: GlobalBatchLoader) -> int:
    return sum(src.samples_per_epoch for src in loader.sources)


def subset(data_url: str, shards: int, folder: Path) -> str:
    """A dataset of the first ``shards`` train shards (symlinked), with its own manifest."""
    full = load_manifest(data_url, "train")
    (folder / "train").mkdir(parents=True, exist_ok=True)
    picked = full.shards[:shards]
    for entry in picked:
        for name in filter(None, (entry.path, entry.index)):
            (folder / "train" / name).symlink_to(Path(full.split_url) / name)
    part = full.model_copy(update={"shards": picked, "total_docs": sum(s.docs for s in picked),
                                   "total_tokens": sum(s.tokens for s in picked), "split_url": ""})
    write_manifest(str(folder), part)
    return str(folder)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(data_url: str, seq_len: int, global_batch: int) -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status_mb("VmRSS")
    loader = GlobalBatchLoader(data_url, "train", seed=0, seq_len=seq_len, global_batch=global_batch)
    tokens = loader_epoch(loader, epoch_samples(loader))
    print(json.dumps({"tokens": tokens, "corpus_tokens": loader.manifest.total_tokens, "rss_before_mb": before, "peak_rss_mb": _status_mb("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_url", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data_url, args.seq_len, args.global_batch)
        return
    manifest = load_manifest(args.data_url, "train")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["KILN_CACHE_DIR"] = cache
        (_, setup_s) = timed(GlobalBatchLoader, args.data_url, "train", 0, args.seq_len, args.global_batch)
        pyarrow_read(manifest)  # warm the page cache
        arrow_rates, window_rates, reader_rates = [], [], []
        for _ in range(args.repeats):
            tokens, seconds = timed(pyarrow_read, manifest)
            arrow_rates.append(tokens / seconds)
            tokens, seconds = timed(pyarrow_windows, manifest, args.seq_len)
            window_rates.append(tokens / seconds)
            loader = GlobalBatchLoader(args.data_url, "train", seed=0, seq_len=args.seq_len, global_batch=args.global_batch)
            loader.next_batch()  # builds or loads the epoch index
            loader.consumed_samples = 0
            tokens, seconds = timed(loader_epoch, loader, epoch_samples(loader))
            reader_rates.append(tokens / seconds)
        arrow, windows, reader = (statistics.median(r) for r in (arrow_rates, window_rates, reader_rates))
        print(f"data: {args.data_url}: {len(manifest.shards)} shards, {manifest.total_tokens / 1e6:.1f} M tokens; "
              f"seq_len {args.seq_len}, global batch {args.global_batch}")
        print(f"first loader (document index; shards are verified at their first read): {setup_s:.2f} s")
        print(f"plain pyarrow IPC read:           {arrow / 1e6:.0f} M tokens/s")
        print(f"pyarrow read copied into windows: {windows / 1e6:.0f} M tokens/s")
        print(f"GlobalBatchLoader (shuffled):     {reader / 1e6:.0f} M tokens/s   "
              f"ratio {reader / arrow:.2f} to the plain read, {reader / windows:.2f} to unshuffled windows")
        with tempfile.TemporaryDirectory() as tmp:
            small = subset(args.data_url, max(1, len(manifest.shards) // 4), Path(tmp) / "small")
            for name, url in (("quarter", small), ("full", args.data_url)):
                out = subprocess.run([sys.executable, __file__, url, "--child", "--seq-len", str(args.seq_len),
                                      "--global-batch", str(args.global_batch)], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"reader peak RSS over one epoch, {name} corpus ({row['corpus_tokens'] / 1e6:.1f} M tokens): "
                      f"+{row['peak_rss_mb'] - row['rss_before_mb']:.1f} MB above the {row['rss_before_mb']:.0f} MB it started with")


if __name__ == "__main__":
    main()
