"""Prepare throughput: ``kiln prepare`` tokens/s ÷ raw sentencepiece encode tokens/s on the same text.

Builds a corpus of real, long documents (the python-docs corpus when present, then the Python
sources installed next to this interpreter) of at least ``--min-tokens`` tokens, and measures
side by side in one run, with the same tokenizer:

* whole command: ``kiln prepare CONFIG`` as a user runs it, in a fresh process: Ray start,
  sampling, tokenizer training, tokenizing, the val split, shards and manifests
* raw:           ``SentencePieceProcessor.encode(docs, num_threads=<cores>)`` on the documents
                 already in memory (before and after the others; the mean is the baseline)
* steady state:  ``prepare()`` in this process on a Ray cluster already up, tokenizer given:
                 what prepare costs once the fixed costs are paid

The load average of the machine is printed before and after: other work slows every
measurement alike only if it is steady, so read the ratios with it.

    .venv/bin/python benchmarks/bench_prepare.py [--work DIR] [--min-tokens 75e6]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import ray
import sentencepiece as spm
import yaml

from data_shards.config import DataConfig
from data_shards.manifest import load_manifest
from data_shards.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
PYTHON_DOCS = REPO / ".." / "shared" / "corpus" / "python-docs"
FILES = 16
BYTES_PER_TOKEN_GUESS = 3.0


def real_texts(min_bytes: int):
    """Documents of real text: python-docs first, then installed Python sources, in a fixed order."""
    seen = 0
    for path in sorted(PYTHON_DOCS.glob("*.jsonl.gz")) if PYTHON_DOCS.is_dir() else []:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if seen >= min_bytes:
                    return
                text = json.loads(line)["text"]
                seen += len(text.encode())
                yield text
    roots = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]})
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            if seen >= min_bytes:
                return
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                seen += len(text.encode())
                yield text
    if seen < min_bytes:
        sys.exit(f"only {seen / 1e6:.0f} MB of real text found; lower --min-tokens")


def build_corpus(folder: Path, min_tokens: float) -> list[Path]:
    files = sorted(folder.glob("part-*.jsonl.gz"))
    if len(files) == FILES:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    outs = [gzip.open(folder / f"part-{i:02d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) for i in range(FILES)]
    for n, text in enumerate(real_texts(int(min_tokens * BYTES_PER_TOKEN_GUESS * 1.1))):
        outs[n % FILES].write(json.dumps({"text": text}) + "\n")
    for f in outs:
        f.close()
    return sorted(folder.glob("part-*.jsonl.gz"))


def load_docs(files: list[Path]) -> list[str]:
    docs = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            docs.extend(json.loads(line)["text"] for line in f)
    return docs


def raw_encode(model: bytes, docs: list[str], threads: int) -> tuple[int, float]:
    sp = spm.SentencePieceProcessor(model_proto=model)
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(docs), 512):
        tokens += sum(len(ids) for ids in sp.encode(docs[i : i + 512], num_threads=threads))
    return tokens, time.perf_counter() - started


def prepared_tokens(data_url: str) -> int:
    """Tokens without the EOS appended to each document, over both splits."""
    total = 0
    for split in ("train", "val"):
        m = load_manifest(data_url, split)
        total += m.total_tokens - m.total_docs
    return total


def whole_command(work: Path, inputs: str, cores: int, vocab_size: int | None = None) -> float:
    """Seconds of ``kiln prepare`` with a config a user would write (everything else at its default, the
    vocabulary too unless given)."""
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "bench-prepare", "seed": 0},
                "data": {
                    "inputs": [inputs],
                    "output": str(work / "data-cli"),
                    **({"vocab_size": vocab_size} if vocab_size else {}),
                },
                "cluster": {"num_cpus": cores},
            }
        )
    )
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "kiln"), "prepare", str(config)],
        check=True,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(REPO / ".cache" / "bench"))
    parser.add_argument("--min-tokens", type=float, default=75e6)
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    vocab_size = None
    if args.tiny:
        args.min_tokens, vocab_size = 50_000, 400
    cores = os.cpu_count() or 1
    work = Path(args.work)
    files = build_corpus(work / "corpus", args.min_tokens)
    inputs = str(work / "corpus" / "part-*.jsonl.gz")
    for name in ("data-cli", "data-given"):
        shutil.rmtree(work / name, ignore_errors=True)
    print(f"{cores} cores; {load()} at the start", flush=True)
    docs = load_docs(files)
    command_s = whole_command(work, inputs, cores, vocab_size)
    model = (work / "data-cli" / "tokenizer" / "tokenizer.model").read_bytes()
    raw_tokens, raw_s = raw_encode(model, docs, cores)
    ray_tmp = tempfile.mkdtemp(prefix="kray-")  # Ray's session folder, removed with it
    ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, _temp_dir=ray_tmp)
    try:
        trained = str(work / "data-cli" / "tokenizer" / "tokenizer.model")
        given = DataConfig(inputs=[inputs], output=str(work / "data-given"), tokenizer=trained)
        started = time.perf_counter()
        prepare(given, seed=0, progress=False)
        steady_s = time.perf_counter() - started
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    raw_tokens2, raw_s2 = raw_encode(model, docs, cores)
    tokens = prepared_tokens(str(work / "data-cli"))
    assert tokens == raw_tokens == raw_tokens2 == prepared_tokens(str(work / "data-given")), "token counts differ"
    raw_rate = tokens / ((raw_s + raw_s2) / 2)
    print(f"{load()} at the end")
    print(
        f"corpus: {len(docs):,} documents, {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB, {tokens / 1e6:.1f} M tokens "
        f"(vocab {DataConfig().vocab_size}, tokenizer trained on a "
        f"{DataConfig().tokenizer_sample_bytes() / 2**20:g} MiB sample)"
    )
    print(
        f"raw SentencePieceProcessor.encode(num_threads={cores}): {raw_rate / 1e6:.2f} M tokens/s "
        f"(runs of {raw_s:.1f} s and {raw_s2:.1f} s)"
    )
    print(
        f"kiln prepare, the whole command:       {tokens / command_s / 1e6:.2f} M tokens/s ({command_s:.1f} s)  "
        f"ratio {tokens / command_s / raw_rate:.2f}"
    )
    print(
        f"prepare in process, tokenizer given:   {tokens / steady_s / 1e6:.2f} M tokens/s ({steady_s:.1f} s)  "
        f"ratio {tokens / steady_s / raw_rate:.2f}"
    )


if __name__ == "__main__":
    main()
