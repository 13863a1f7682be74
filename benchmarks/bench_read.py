"""Read throughput of Kiln's loader against the loaders users pick, on the same tokens.

Full shuffled epochs of ``seq_len + 1``-token windows in batches of ``--global-batch``, one
process, files in the page cache, each reader in a child process of its own so that its peak
resident memory can be read (``/proc/self/clear_refs``, then ``VmHWM``); each reader's fastest
of three epochs counts, so that a busy second on a shared machine does not decide a row:

* kiln-global / kiln-block: ``GlobalBatchLoader`` in each shuffle mode (random windows of the
  whole corpus; random windows of a block of ``--block-shards`` shards at a time)
* olmo-core: ``NumpyFSLDataset`` + a torch ``DataLoader(shuffle=True)``, and its own
  ``NumpyFSLDataLoader`` (global random-window shuffle, like for like)
* megatron-core: ``GPTDataset`` over an ``IndexedDataset`` (global random-window shuffle, like for like)
* litdata: ``StreamingDataset(TokensLoader, shuffle=True)`` (its shuffle stays inside chunks)
* mosaicml-streaming: ``StreamingDataset(shuffle=True)`` over MDS rows of one window each

Each peer gets the corpus in its own format first (conversion, not timed); "index" is what it
then spends before the first batch (Kiln: building the epoch order).  Peers come from the
``bench`` extra, installed by ``make bench-peers`` into ``.venv-bench``; run this file with that
interpreter to include them (a peer that does not import is reported as missing).
``--s3`` adds Kiln in block mode and litdata, both streaming from a moto S3 server with a cache
of a quarter of the data.  Kiln's peak memory is also read on a quarter of the corpus, to show
that it does not grow with the corpus.

    .venv-bench/bin/python benchmarks/bench_read.py [DATA_URL] [--seq-len 2048 --global-batch 64] [--s3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_shards.config import ReadConfig
from data_shards.loader import GlobalBatchLoader
from data_shards.manifest import load_manifest, write_manifest
from data_shards.shard_format import read_docs

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".cache" / "bench" / "data-given"
LIKE_FOR_LIKE = ("olmo-core", "olmo-core-loader", "megatron-core")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def warm(paths) -> None:
    """Read files once so that every reader starts with them in the page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def reset_peak() -> float:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS mark drops to the current RSS
    return _status_mb("VmRSS")


# ---- conversions: the corpus as one token stream, in each peer's format (cached) -------------


def token_stream(data_url: str) -> tuple[np.ndarray, np.ndarray]:
    """Every document of the split in manifest order, as one uint16 stream, and the document lengths."""
    manifest = load_manifest(data_url, "train")
    docs = [d for i in range(len(manifest.shards)) for d in read_docs(manifest.shard_location(i).url)]
    return np.concatenate(docs).astype(np.uint16), np.array([len(d) for d in docs], dtype=np.int64)


def convert(peer: str, data_url: str, folder: Path, seq_len: int) -> None:
    done = folder / "converted"
    if done.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tokens, lengths = token_stream(data_url)
    if peer.startswith("olmo-core"):
        tokens.tofile(folder / "tokens.npy")  # OLMo reads raw uint16 memmaps
    elif peer == "megatron-core":
        import torch
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        builder = IndexedDatasetBuilder(str(folder / "tokens.bin"), dtype=np.uint16)
        for doc in np.split(tokens, np.cumsum(lengths)[:-1]):
            builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
        builder.finalize(str(folder / "tokens.idx"))
    elif peer.startswith("litdata"):
        from litdata import TokensLoader, optimize

        pieces = np.array_split(tokens, max(1, len(tokens) // (1 << 22)))
        shards = load_manifest(data_url, "train").shards  # chunks as big as Kiln's shards, for the same cache
        optimize(
            fn=_litdata_piece,
            inputs=pieces,
            output_dir=str(folder / "chunks"),
            chunk_bytes=sum(s.bytes for s in shards) // len(shards),
            item_loader=TokensLoader(),
            num_workers=1,
            verbose=False,
        )
    elif peer == "mosaicml-streaming":
        without_streaming_vision()
        from streaming import MDSWriter

        n = (len(tokens) - 1) // seq_len
        with MDSWriter(out=str(folder / "mds"), columns={"tokens": f"ndarray:uint16:{seq_len + 1}"}, size_limit="64mb") as out:
            for w in range(n):
                out.write({"tokens": tokens[w * seq_len : w * seq_len + seq_len + 1]})
    done.write_text("ok\n")


def _litdata_piece(piece):
    import torch

    yield torch.from_numpy(piece.astype(np.int64)).to(torch.uint16)


# ---- readers: build the index, then read shuffled epochs --------------------------------------

EPOCHS = 3  # each reader's best epoch counts: on a shared machine a single epoch may land on a busy second


def best_epoch(epoch, tokens_of) -> tuple[int, float]:
    """(tokens, seconds) of the fastest of EPOCHS full passes; ``epoch(e)`` yields the batches of pass ``e``."""
    best = None
    for e in range(EPOCHS):
        started = time.perf_counter()
        tokens = sum(tokens_of(b) for b in epoch(e))
        seconds = time.perf_counter() - started
        if best is None or tokens / seconds > best[0] / best[1]:
            best = (tokens, seconds)
    return best


def read_kiln(data_url: str, folder: Path, seq_len: int, batch: int, mode: str, block_shards: int, cache_gb: float):
    os.environ["KILN_CACHE_DIR"] = str(folder / "kiln-cache")
    started = time.perf_counter()
    loader = GlobalBatchLoader(
        data_url,
        "train",
        seed=0,
        seq_len=seq_len,
        global_batch=batch,
        read=ReadConfig(shuffle=mode, block_shards=block_shards, cache_limit_gb=cache_gb),
    )
    for reader in loader.sources:
        reader.epoch(0)
    if not loader.store.bounded:
        for i in range(len(loader.manifest.shards)):  # the first-use checksum of every shard, counted here
            loader.store.acquire(i)
    index_s = time.perf_counter() - started
    samples = sum(r.samples_per_epoch for r in loader.sources)

    def epoch(e):
        loader.consumed_samples = 0  # the same epoch again: the order is fixed, the page cache warm
        return (loader.next_batch() for _ in range(samples // batch))

    return (index_s, *best_epoch(epoch, lambda b: b.shape[0] * seq_len))


def read_olmo(folder: Path, seq_len: int, batch: int, own_loader: bool):
    import torch
    from olmo_core.data import NumpyFSLDataLoader, NumpyFSLDataset
    from olmo_core.data.collator import DataCollator

    started = time.perf_counter()
    dataset = NumpyFSLDataset(
        str(folder / "tokens.npy"),
        sequence_length=seq_len + 1,
        pad_token_id=0,
        eos_token_id=2,
        vocab_size=65535,
        dtype=np.uint16,
    )
    dataset.work_dir = str(folder / "work")
    dataset.prepare()
    if own_loader:
        loader = NumpyFSLDataLoader(
            dataset,
            collator=DataCollator(pad_token_id=0),
            global_batch_size=batch * (seq_len + 1),
            work_dir=str(folder / "work"),
            seed=0,
            shuffle=True,
            num_workers=0,
        )
        loader.reshuffle(epoch=1)

        def epoch(e):
            if e:
                loader.reset()
                loader.reshuffle(epoch=e + 1)
            return iter(loader)
    else:
        torch_loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)

        def epoch(e):
            return iter(torch_loader)

    index_s = time.perf_counter() - started
    return (index_s, *best_epoch(epoch, lambda b: b["input_ids"].shape[0] * seq_len))


def read_megatron(folder: Path, seq_len: int, batch: int):
    import torch
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer

    started = time.perf_counter()
    tokens_total = os.path.getsize(folder / "tokens.bin") // 2
    samples = (tokens_total - 1) // seq_len
    config = GPTDatasetConfig(
        random_seed=0,
        sequence_length=seq_len,
        blend=([str(folder / "tokens")], None),
        split="1,0,0",
        path_to_cache=str(folder / "index-cache"),
        tokenizer=NullTokenizer(65534),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, None, None], lambda: True, config).build()
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=False, num_workers=0, drop_last=True)
    index_s = time.perf_counter() - started
    return (index_s, *best_epoch(lambda e: iter(loader), lambda b: b["tokens"].shape[0] * seq_len))


def read_litdata(input_dir: str, seq_len: int, batch: int, cache: str | None = None, max_cache_size: str | None = None):
    from litdata import StreamingDataLoader, StreamingDataset, TokensLoader

    started = time.perf_counter()
    kwargs = {"max_cache_size": max_cache_size} if max_cache_size else {}
    if cache:
        from litdata.streaming import downloader
        from litdata.streaming.resolver import Dir

        input_dir = Dir(path=cache, url=input_dir)
        # litdata's object_store client refuses plain http; the local moto server speaks nothing else
        downloader._OBSTORE_CLIENT_OPTIONS = {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": True}
    dataset = StreamingDataset(input_dir, item_loader=TokensLoader(block_size=seq_len + 1), shuffle=True, seed=0, **kwargs)
    loader = StreamingDataLoader(dataset, batch_size=batch, num_workers=0, drop_last=True)
    index_s = time.perf_counter() - started
    return (index_s, *best_epoch(lambda e: iter(loader), lambda b: b.shape[0] * seq_len))


def read_mosaic(folder: Path, seq_len: int, batch: int):
    import torch
    from streaming import StreamingDataset

    started = time.perf_counter()
    dataset = StreamingDataset(local=str(folder / "mds"), shuffle=True, shuffle_seed=0, batch_size=batch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, num_workers=0, drop_last=True)
    index_s = time.perf_counter() - started
    return (index_s, *best_epoch(lambda e: iter(loader), lambda b: b["tokens"].shape[0] * seq_len))


def child(args) -> None:
    """Convert (untimed), reset the peak-memory mark, then build and read; one JSON line out."""
    folder = Path(args.work) / args.child
    peer = args.child
    if not peer.startswith("kiln"):
        convert(_format_of(peer), args.data_url, Path(args.work) / _format_of(peer), args.seq_len)
    folder = Path(args.work) / _format_of(peer)
    if peer.startswith("kiln") and not args.data_url.startswith("s3://"):
        manifest = load_manifest(args.data_url, "train")
        warm(manifest.shard_location(i).url for i in range(len(manifest.shards)))
    elif folder.exists():
        warm(p for p in folder.rglob("*") if p.is_file())
    preload(peer)
    before = reset_peak()
    if peer.startswith("kiln"):
        mode = "block" if "block" in peer else "global"
        index_s, tokens, seconds = read_kiln(
            args.data_url,
            Path(tempfile.mkdtemp(dir=args.work)),
            args.seq_len,
            args.global_batch,
            mode,
            args.block_shards,
            args.cache_gb,
        )
    elif peer.startswith("olmo-core"):
        index_s, tokens, seconds = read_olmo(folder, args.seq_len, args.global_batch, own_loader=peer.endswith("loader"))
    elif peer == "megatron-core":
        index_s, tokens, seconds = read_megatron(folder, args.seq_len, args.global_batch)
    elif peer == "litdata":
        index_s, tokens, seconds = read_litdata(str(folder / "chunks"), args.seq_len, args.global_batch)
    elif peer == "litdata-s3":
        index_s, tokens, seconds = read_litdata(
            args.data_url,
            args.seq_len,
            args.global_batch,
            cache=tempfile.mkdtemp(dir=args.work),
            max_cache_size=f"{int(args.cache_gb * 1000)}MB",
        )
    else:
        index_s, tokens, seconds = read_mosaic(folder, args.seq_len, args.global_batch)
    print(json.dumps({"index_s": index_s, "tokens": tokens, "seconds": seconds, "peak_rss_mb": _status_mb("VmHWM") - before}))


def without_streaming_vision() -> None:
    """MosaicML Streaming's package imports its vision datasets, which import torchvision, which has no build
    for the CPU torch wheel (``make bench-peers`` leaves it out); the benchmark uses only the text path, so an
    empty module stands in for ``streaming.vision``."""
    import importlib.util
    import types

    if importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("streaming.vision", types.ModuleType("streaming.vision"))


def preload(peer: str) -> None:
    """Import a peer before the memory mark is reset: its peak counts reading, not its libraries."""
    import importlib

    packages = {
        "olmo-core": ["torch", "olmo_core.data"],
        "megatron-core": ["torch", "megatron.core.datasets.gpt_dataset"],
        "litdata": ["torch", "litdata"],
        "mosaicml-streaming": ["torch", "streaming"],
    }
    if _format_of(peer) == "mosaicml-streaming":
        without_streaming_vision()
    for name in packages.get(_format_of(peer), []):
        importlib.import_module(name)


def _format_of(peer: str) -> str:
    return {"olmo-core-loader": "olmo-core", "litdata-s3": "litdata"}.get(peer, peer)


def run_child(name: str, data_url: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        data_url,
        "--child",
        name,
        "--work",
        args.work,
        "--seq-len",
        str(args.seq_len),
        "--global-batch",
        str(args.global_batch),
        "--block-shards",
        str(args.block_shards),
        "--cache-gb",
        str(args.cache_gb),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": last[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def subset(data_url: str, shards: int, folder: Path) -> str:
    """A dataset of the first ``shards`` train shards (symlinked), with its own manifest."""
    full = load_manifest(data_url, "train")
    (folder / "train").mkdir(parents=True, exist_ok=True)
    picked = full.shards[:shards]
    for entry in picked:
        for name in filter(None, (entry.path, entry.index)):
            (folder / "train" / name).symlink_to(Path(full.split_location.url) / name)
    part = full.model_copy(
        update={
            "shards": picked,
            "total_docs": sum(s.docs for s in picked),
            "total_tokens": sum(s.tokens for s in picked),
        }
    )
    write_manifest(str(folder), part)
    return str(folder)


def s3_copy(data_url: str, args) -> tuple[object, str]:
    """A moto S3 server on 127.0.0.1 holding the split in Kiln's layout and in litdata's."""
    import boto3
    from moto.server import ThreadedMotoServer

    from ops import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)  # binds a free port itself
    server.start()
    _, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(Bucket="bench")
    for local, url in (
        (load_manifest(data_url, "train").split_location.url, "s3://bench/kiln/train"),
        (str(Path(args.work) / "litdata" / "chunks"), "s3://bench/litdata"),
    ):
        fs, path = storage.filesystem(url)
        fs.put(local.rstrip("/") + "/", path, recursive=True)
    return server, "s3://bench"


def report(rows: dict[str, dict], kiln: tuple[str, ...], like_for_like: tuple[str, ...], litdata: str) -> None:
    print(f"{'reader':24} {'M tokens/s':>11} {'index s':>8} {'peak RSS MB':>12}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:24} {'missing' if r['error'].startswith('ModuleNotFoundError') else 'failed'}: {r['error']}")
        else:
            print(f"{name:24} {r['tokens'] / r['seconds'] / 1e6:11.1f} {r['index_s']:8.2f} {r['peak_rss_mb']:12.1f}")
    rate = {n: r["tokens"] / r["seconds"] for n, r in rows.items() if "error" not in r}
    like = {n: rate[n] for n in like_for_like if n in rate}
    for mine in (k for k in kiln if k in rate):
        parts = []
        if like:
            best = max(like, key=like.get)
            parts.append(f"{rate[mine] / like[best]:.1f}x the best like-for-like peer ({best}; target 3x)")
        if litdata in rate:
            parts.append(f"{rate[mine] / rate[litdata]:.2f}x litdata (target 1x)")
        print(f"{mine}: " + ", ".join(parts or ["no peer measured (run with .venv-bench/bin/python)"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_url", nargs="?", default=str(DEFAULT_DATA))
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--block-shards", type=int, default=8)
    parser.add_argument("--cache-gb", type=float, default=32.0)
    parser.add_argument("--work", default=str(REPO / ".cache" / "bench" / "read"))
    parser.add_argument("--s3", action="store_true", help="also stream Kiln (block) and litdata from a moto S3 server")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    if args.tiny:
        args.seq_len, args.global_batch, args.block_shards = 16, 4, 1
    if args.child:
        child(args)
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(args.data_url, "train")
    print(
        f"data: {args.data_url}: {len(manifest.shards)} shards, "
        f"{manifest.total_tokens / 1e6:.1f} M tokens ({manifest.dtype}); "
        f"windows of {args.seq_len + 1} tokens, batch {args.global_batch}, one epoch, one process; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        flush=True,
    )
    names = ["kiln-global", "kiln-block", "olmo-core", "olmo-core-loader", "megatron-core", "litdata", "mosaicml-streaming"]
    rows = {name: run_child(name, args.data_url, args) for name in names}
    report(rows, ("kiln-global", "kiln-block"), LIKE_FOR_LIKE, "litdata")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        small = subset(args.data_url, max(1, len(manifest.shards) // 4), Path(tmp) / "small")
        for name, url in (("quarter", small), ("full", args.data_url)):
            r = run_child("kiln-global", url, args)
            print(f"kiln-global peak RSS over one epoch of the {name} corpus: +{r.get('peak_rss_mb', float('nan')):.1f} MB")
    if args.s3:
        quarter_gb = sum(s.bytes for s in manifest.shards) / 4 / 1e9
        server, bucket = s3_copy(args.data_url, args)
        try:
            args.cache_gb = quarter_gb
            block = max(1, min(args.block_shards, (len(manifest.shards) // 4 - 1) // 2))
            args.block_shards = block
            s3_rows = {
                "kiln-block (s3)": run_child("kiln-block", f"{bucket}/kiln", args),
                "litdata (s3)": run_child("litdata-s3", f"{bucket}/litdata", args),
            }
        finally:
            server.stop()
        print(f"from S3 (moto), cache limit a quarter of the data ({quarter_gb * 1e3:.0f} MB), kiln block of {block} shards:")
        report(s3_rows, ("kiln-block (s3)",), (), "litdata (s3)")


if __name__ == "__main__":
    main()
