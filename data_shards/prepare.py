"""``kiln prepare``: tokenizer, then token shards and manifests, on the caller's Ray cluster.

Phases: expand inputs into partitions → (unless a tokenizer is given or already
trained with the same settings) a seeded bounded sample per partition and
sentencepiece training → optional corpus-wide exact de-duplication → one tokenize
task per partition, each leaving a completion marker → the val manifest, then the
train manifest, written last.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque

import ray

from data_shards import dedup, near_dedup
from data_shards.config import READ_KEYS, DataConfig, DedupExact, NearDedup
from data_shards.errors import DataError
from data_shards.inputs import Partition, check_output, partitions_for
from data_shards.filters import CORPUS_STEPS
from data_shards.manifest import (
    FunnelStep,
    Manifest,
    ShardEntry,
    SourceStats,
    manifest_url,
    write_manifest,
)
from data_shards.partition_work import WORK_DIR, TokenizeJob, sample_partition, tokenize_partition
from data_shards.progress import PrepareProgress
from data_shards.ray_results import get
from data_shards.shard_format import token_dtype
from data_shards.tokenizer import META_PATH, Tokenizer, train_tokenizer
from ops import storage

MIB = 1 << 20


def _partitions(data: DataConfig, storage_options: dict) -> list[Partition]:
    sources = data.train_sources()
    if not sources:
        raise DataError("data.inputs is empty: list at least one input file, glob or URL")
    train_split = "train" if data.val_inputs else "holdout"
    groups = [(s.name, train_split, s.text_field or data.text_field, s.inputs) for s in sources]
    if data.val_inputs:
        groups.append(("val", "val", data.text_field, data.val_inputs))
    partition_bytes = max(1, int(data.partition_mb * MIB))
    return partitions_for(groups, storage_options, partition_bytes, data.max_doc_bytes)


def _settings_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer(
    data: DataConfig, output: storage.Location, seed: int, partitions: list[Partition], show: PrepareProgress
) -> tuple[Tokenizer, bool]:
    """The user's tokenizer, the one already trained with these settings, or a newly trained one (saved);
    and whether it was trained now."""
    if data.tokenizer:
        tok = Tokenizer.from_file(output.with_url(data.tokenizer))
        _save_tokenizer(tok, output, {})
        return tok, False
    train_parts = [p for p in partitions if p.split != "val"]
    settings = _settings_hash(
        {
            "files": [(p.files, p.sizes) for p in train_parts],
            "seed": seed,
            "vocab_size": data.vocab_size,
            "sample_mb": data.tokenizer_sample_bytes() / MIB,
            "threads": data.tokenizer_threads,
            "filters": [f.model_dump() for f in data.filters],
            "text_field": data.text_field,
        }
    )
    meta_url = output.join(META_PATH)
    if storage.exists(meta_url):
        meta = storage.read_json(meta_url)
        if meta.get("settings") == settings:
            return Tokenizer.load(output), False
    total = sum(p.bytes for p in train_parts) or 1
    budget = data.tokenizer_sample_bytes()
    task = ray.remote(num_cpus=1)(sample_partition)
    phase = show.phase("sampling for the tokenizer", len(train_parts))
    refs = [task.remote(p, max(1, int(budget * p.bytes / total)), seed, data.filters, data.on_error) for p in train_parts]
    lines: list[str] = []
    for i, ref in enumerate(refs):  # in partition order: the sample is independent of scheduling
        lines.extend(get(ref))
        show.update(phase, i + 1)
    if not lines:
        raise DataError(f"empty corpus: the train inputs of data.inputs hold no text ({len(train_parts)} partitions read)")
    phase = show.phase("training tokenizer", 1)
    tok = train_tokenizer(lines, data.vocab_size, seed, data.tokenizer_threads)
    show.update(phase, 1)
    _save_tokenizer(tok, output, {"settings": settings, "sample_lines": len(lines)})
    return tok, True


def _save_tokenizer(tok: Tokenizer, output: storage.Place, extra: dict) -> None:
    """Write the tokenizer; committed data made with another tokenizer is un-committed first,
    so no reader ever pairs old shards with a new tokenizer."""
    for split in ("val", "train"):
        url = manifest_url(output, split)
        if storage.exists(url) and storage.read_json(url).get("tokenizer_sha256") != tok.sha256:
            storage.remove(url)
    tok.save(output, extra=extra)


@ray.remote(num_cpus=0)
class _Counter:
    def __init__(self):
        self.docs = 0
        self.tokens = 0

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens

    def totals(self) -> tuple[int, int]:
        return self.docs, self.tokens


def _tokenize_all(
    partitions, job: TokenizeJob, drops: dict[str, dict[int, frozenset]], max_inflight: int, show: PrepareProgress
) -> tuple[list[dict], int]:
    """Run a tokenize task per partition without a marker, at most ``max_inflight`` at once; every
    partition's marker, and how many partitions were tokenized now."""
    markers: dict[int, dict] = {}
    todo = []
    for p in partitions:
        url = job.marker_url(p.index)
        if storage.exists(url):
            markers[p.index] = storage.read_json(url)
        else:
            todo.append(p)
    counter = _Counter.remote()
    task = ray.remote(num_cpus=1)(_tokenize_task)
    phase = show.phase(f"tokenizing ({len(markers)} done earlier)" if markers else "tokenizing", len(partitions))
    pending: dict = {}
    queue = deque(todo)
    job_ref = ray.put(job)
    show.update(phase, len(markers))
    while queue or pending:
        while queue and len(pending) < max_inflight:
            p = queue.popleft()
            mine = {name: ids.get(p.index, frozenset()) for name, ids in drops.items()}
            pending[task.remote(p, job_ref, mine, counter)] = p.index
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in done:
            markers[pending.pop(ref)] = get(ref)
        docs, tokens = ray.get(counter.totals.remote())
        show.update(phase, len(markers), docs, tokens)
    ray.kill(counter)
    return [markers[p.index] for p in partitions], len(todo)


def _corpus_drops(data: DataConfig, partitions, job: TokenizeJob, show) -> dict[str, dict[int, frozenset]]:
    """doc_ids removed by the corpus-wide steps, by step name and partition."""
    drops = {}
    for spec in data.filters:
        if isinstance(spec, DedupExact):
            drops[spec.name] = dedup.duplicates(partitions, job, show)
        elif isinstance(spec, NearDedup):
            drops[spec.name] = near_dedup.duplicates(partitions, job, spec, show)
    return drops


def _tokenize_task(partition: Partition, job: TokenizeJob, drops: dict[str, frozenset], counter) -> dict:
    return tokenize_partition(partition, job, drops, report=lambda d, t: counter.add.remote(d, t))


def _config_hash(data: DataConfig, seed: int, tokenizer: Tokenizer) -> str:
    ignored = {"output", "max_inflight", "tokenizer", "tokenizer_threads", "tokenizer_sample_mb", *READ_KEYS}
    relevant = data.model_dump(exclude=ignored)
    return _settings_hash({"data": relevant, "seed": seed, "tokenizer": tokenizer.sha256})[:16]


def _manifests(data: DataConfig, markers: list[dict], tok: Tokenizer, cfg_hash: str, dtype: str) -> dict[str, Manifest]:
    weights = {s.name: s.weight for s in data.train_sources()}
    errors: dict[str, int] = {}
    filters: dict[str, dict[str, int]] = {}
    for m in markers:
        for k, v in m["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for name, c in m["filters"].items():
            slot = filters.setdefault(name, {"dropped": 0, "changed": 0})
            for k, v in c.items():
                slot[k] = slot.get(k, 0) + v
    funnel = _funnel(data, filters, errors.get("empty_docs", 0), markers)
    out = {}
    for split in ("train", "val"):
        entries = [ShardEntry(**e) for m in markers for e in m["shards"][split]]
        sources: dict[str, SourceStats] = {}
        for e in entries:
            stats = sources.setdefault(e.source, SourceStats(weight=weights.get(e.source, 1.0)))
            stats.docs += e.docs
            stats.tokens += e.tokens
        out[split] = Manifest(
            split=split,
            config_hash=cfg_hash,
            tokenizer_sha256=tok.sha256,
            vocab_size=tok.vocab_size,
            bos_id=tok.bos_id,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            dtype=dtype,
            shards=entries,
            total_docs=sum(e.docs for e in entries),
            total_tokens=sum(e.tokens for e in entries),
            sources=sources,
            filters=filters,
            errors=errors,
            funnel=funnel,
        )
    return out


def _funnel(data: DataConfig, filters: dict, empty: int, markers: list[dict]) -> list[FunnelStep]:
    """Documents read, then what each step removed in the order they run: per-document steps in
    ``data.filters`` order, documents left empty, then the corpus-wide steps."""
    steps = [f.name for f in data.filters if not isinstance(f, CORPUS_STEPS)]
    steps += ["empty_docs"] + [f.name for f in data.filters if isinstance(f, CORPUS_STEPS)]
    dropped = {name: filters.get(name, {}).get("dropped", 0) for name in steps}
    dropped["empty_docs"] = empty
    left = sum(e["docs"] for m in markers for split in ("train", "val") for e in m["shards"][split])
    left += sum(dropped.values())
    rows = [FunnelStep(step="read", dropped=0, left=left)]
    for name in steps:
        left -= dropped[name]
        rows.append(FunnelStep(step=name, dropped=dropped[name], left=left))
    return rows


def prepare(data: DataConfig, seed: int, storage_options: dict | None = None, progress: bool = True) -> dict:
    """Tokenizer + train and val shards + manifests under ``data.output``; ``storage_options`` reach
    every URL of ``data``.

    Uses the Ray instance the caller connected; a killed run resumes from the
    per-partition completion markers.  Returns docs, tokens and shards per split, seconds, and the
    work this call did: partitions tokenized (those without a marker) and whether it trained the tokenizer.
    """
    started = time.perf_counter()
    options = dict(storage_options or {})
    output = storage.Location(data.output, options)
    check_output(output)
    partitions = _partitions(data, options)
    if not ray.is_initialized():
        raise DataError("prepare needs a connected Ray cluster: call ray.init() first")
    # Scratch files of tasks killed in an earlier run; their partitions have no marker and are redone.
    storage.remove(output.join(WORK_DIR, "tmp"), recursive=True)
    with PrepareProgress(progress) as show:
        tok, tokenizer_trained = _tokenizer(data, output, seed, partitions, show)
        cfg_hash = _config_hash(data, seed, tok)
        dtype = token_dtype(tok.vocab_size)
        job = TokenizeJob(
            output=output,
            config_hash=cfg_hash,
            seed=seed,
            tokenizer_bytes=tok.model_bytes,
            filters=list(data.filters),
            on_error=data.on_error,
            val_fraction=0.0 if data.val_inputs else data.val_fraction,
            shard_bytes=max(1, int(data.shard_mb * MIB)),
            batch_bytes=max(1, int(min(data.record_batch_mb, data.shard_mb / 4) * MIB)),
            dtype=dtype,
        )
        max_inflight = data.max_inflight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        drops = _corpus_drops(data, partitions, job, show)
        markers, tokenized = _tokenize_all(partitions, job, drops, max_inflight, show)
    manifests = _manifests(data, markers, tok, cfg_hash, dtype)
    if manifests["train"].total_docs == 0:
        raise DataError(
            f"empty corpus: no training documents left in data.inputs (errors {manifests['train'].errors}, "
            f"filters {manifests['train'].filters})"
        )
    write_manifest(output, manifests["val"])
    write_manifest(output, manifests["train"])
    summary = {
        "seconds": round(time.perf_counter() - started, 2),
        "partitions": len(partitions),
        "partitions_tokenized": tokenized,
        "tokenizer_trained": tokenizer_trained,
    }
    for split, m in manifests.items():
        summary.update({f"{split}_docs": m.total_docs, f"{split}_tokens": m.total_tokens, f"{split}_shards": len(m.shards)})
    return summary
