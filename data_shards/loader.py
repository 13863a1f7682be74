"""Per-rank reading of the global sample order, and whole-shard views for evaluation."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_shards import sample_order
from data_shards.config import ReadConfig
from data_shards.errors import DataError
from data_shards.manifest import Manifest, load_manifest
from data_shards.shard_cache import cache_dir, private_dir, shard_lengths
from data_shards.shard_files import ShardFiles
from data_shards.shard_format import doc_index
from data_shards.shard_stores import ShardStore, shard_store
from data_shards.shuffles import EpochOrder, Shuffle, SourceLayout, shuffle_for
from ops import storage

INDEX_VERSION = 2
PLAN_ROWS = 4096


class SourceReader:
    """One source of a split: its documents and its per-epoch sample order.

    Documents are numbered across the loader's sources; this source's are
    ``first_doc : first_doc + len(layout.doc_lengths)``.
    """

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        shard_ids: list[int],
        lengths: list[np.ndarray],
        first_doc: int,
        seed: int,
        seq_len: int,
        shuffle: Shuffle,
    ):
        self.name, self.seed, self.seq_len, self.shuffle = name, seed, seq_len, shuffle
        self.shard_ids = np.asarray(shard_ids, dtype=np.int64)
        self.first_doc = first_doc
        doc_shard = np.concatenate(
            [np.full(len(n), s, dtype=np.int32) for s, n in enumerate(lengths)] or [np.zeros(0, np.int32)]
        )
        self.layout = SourceLayout(np.concatenate(lengths or [np.zeros(0, np.int64)]), doc_shard, len(shard_ids))
        self.total_tokens = int(self.layout.doc_lengths.sum())
        self.samples_per_epoch = sample_order.samples_per_epoch(self.total_tokens, seq_len)
        if self.samples_per_epoch < 1:
            raise DataError(
                f"source {name!r} of {manifest.split_location} has {self.total_tokens} tokens, "
                f"fewer than seq_len+1={seq_len + 1}: add data or lower model.seq_len"
            )
        self._key = hashlib.sha256(
            f"{INDEX_VERSION}|{manifest.fingerprint}|{name}|{seed}|{seq_len}|{shuffle.key}".encode()
        ).hexdigest()[:24]
        self._epochs: OrderedDict[int, EpochOrder] = OrderedDict()

    def epoch(self, e: int) -> EpochOrder:
        """Epoch ``e``'s order; the two most recently used stay loaded (a batch can span two)."""
        if e not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.popitem(last=False)
            self._epochs[e] = self.shuffle.open(self._load_or_build(e), self.seed, self.name, e)
        return self._epochs[e]

    def _load_or_build(self, e: int) -> dict[str, np.ndarray]:
        folder = cache_dir() / "sample-index"
        names = {part: folder / f"{self._key}-e{e:05d}-{part}.npy" for part in self.shuffle.arrays}
        if all(p.exists() for p in names.values()):
            try:
                return {part: np.load(path, mmap_mode="r") for part, path in names.items()}
            except (ValueError, OSError):
                pass  # a damaged cache entry is rebuilt below
        arrays = self.shuffle.build(self.layout, self.seed, self.name, e, self.seq_len)
        private_dir(folder)
        for part, array in arrays.items():
            tmp = folder / f".{names[part].name}.{uuid.uuid4().hex}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, names[part])
        return arrays

    def pieces(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where this source's ``samples`` lie, one entry per piece (the part of a window inside one
        document): the sample's position in ``samples``, the document (loader numbering), the first
        token inside it and the token count.  Pieces come in sample order, each sample's in column order."""
        samples = np.asarray(samples, dtype=np.int64)
        epochs, within = np.divmod(samples, self.samples_per_epoch)
        parts = []
        for e in np.unique(epochs).tolist():
            ep = self.epoch(e)
            sel = np.flatnonzero(epochs == e)
            windows = ep.windows(within[sel])
            rows, _, docs, begins, takes = sample_order.batch_pieces(ep.order, ep.starts, windows, self.seq_len)
            parts.append((sel[rows], docs + self.first_doc, begins, takes))
        return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


@dataclass
class _ReadPlan:
    """Pieces of consecutive rows: rows ``r`` are pieces ``row_start[r]:row_start[r+1]``.

    ``shard``/``doc``/``begin``/``size`` place each piece (bytes inside its document);
    ``paths``/``starts``/``stops`` are its byte ranges, filled when every shard of the plan is at hand.
    """

    first_batch: int
    batches: int
    row_start: np.ndarray
    shard: np.ndarray
    doc: np.ndarray
    begin: np.ndarray
    size: np.ndarray
    paths: list[str] | None = None
    starts: list[int] | None = None
    stops: list[int] | None = None


def first_uses(shards: np.ndarray) -> list[int]:
    """Distinct shard numbers in the order of their first occurrence."""
    unique, first = np.unique(shards, return_index=True)
    return unique[np.argsort(first)].tolist()


def check_cache_room(manifest: Manifest, source_names: list[str], read: ReadConfig) -> None:
    """With a shuffle that bounds what a node reads at once, the node's shard cache must hold that much:
    a DataError naming the keys when ``data.cache_limit_gb`` is too small for the sources read.

    A pure function of the manifest and the read section, so ``kiln train`` checks it once, before any rank starts.
    """
    shuffle = shuffle_for(read.shuffle_mode(not storage.is_local(manifest.split_location)), read.block_shards)
    need = 0
    for name in source_names:
        sizes = [s.bytes for s in manifest.shards if s.source == name]
        at_once = shuffle.shards_at_once(len(sizes))
        if at_once is None:
            return
        need += at_once * max(sizes, default=0)
    if need > read.cache_limit_gb * 1e9:
        raise DataError(
            f"data.cache_limit_gb={read.cache_limit_gb:g} is too small for data.shuffle={shuffle.name} with "
            f"data.block_shards={read.block_shards}: a node holds up to {need / 1e9:.3g} GB of shards at once; "
            f"raise it or lower data.block_shards"
        )


class GlobalBatchLoader:
    """This rank's slice of each global batch, in the run's global sample order.

    Global batch ``b`` is samples ``[b*G, (b+1)*G)``; rank ``r`` of ``W`` reads the
    contiguous block ``[b*G + r*G/W, b*G + (r+1)*G/W)``.  ``consumed_samples`` counts all
    ranks together, so the state is the same on every rank and a resume may change ``W``.
    The order is a pure function of (manifest fingerprint, seed, seq_len, blend weights,
    shuffle mode, n).  Shards on object storage stream through the node's bounded cache:
    the shards of each batch are held while it is read and given back after.
    """

    def __init__(
        self,
        data: storage.Place,
        split: str,
        seed: int,
        seq_len: int,
        global_batch: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        consumed_samples: int = 0,
        blend: dict[str, float] | None = None,
        read: ReadConfig | None = None,
    ):
        if seq_len < 1 or global_batch < 1:
            raise DataError(f"seq_len ({seq_len}) and global_batch ({global_batch}) must be positive")
        sample_order.rank_slice(0, global_batch, dp_rank, dp_world)
        read = read or ReadConfig()
        self.manifest = load_manifest(data, split)
        self.seed, self.seq_len, self.global_batch = int(seed), int(seq_len), int(global_batch)
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.fingerprint = self.manifest.fingerprint
        self.shuffle = shuffle_for(read.shuffle_mode(not storage.is_local(self.manifest.split_location)), read.block_shards)
        names = self.manifest.source_names()
        if not self.manifest.shards:
            raise DataError(f"{self.manifest.split_location} holds no documents: nothing to read for split {split!r}")
        weights = blend or {n: (self.manifest.sources[n].weight if n in self.manifest.sources else 1.0) for n in names}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise DataError(f"blend names unknown source(s) {unknown}; the data has {names}")
        self.source_names = [n for n in names if n in weights]
        self.weights = {n: float(weights[n]) for n in self.source_names}
        self.store: ShardStore = shard_store(self.manifest, read)
        self._files = ShardFiles()
        try:
            self._index_documents()
            if self.store.bounded:
                check_cache_room(self.manifest, self.source_names, read)
        except BaseException:  # anything, Ctrl-C included: let go of the cache, then raise it on
            self.close()
            raise
        self._blend = sample_order.BlendIndex([self.weights[n] for n in self.source_names]) if len(self.sources) > 1 else None
        self.dtype = np.dtype(self.manifest.dtype)
        self._min_epoch_samples = min(reader.samples_per_epoch for reader in self.sources)
        self._plans: list[_ReadPlan] = []
        self._held: set[int] = set()
        self.consumed_samples = int(consumed_samples)
        self.last_wait_s = 0.0

    def _index_documents(self) -> None:
        """Document lengths of every shard the sources read (index files, else the shards themselves),
        numbered across sources; byte offsets are filled as shards are first opened."""
        self.sources: list[SourceReader] = []
        shard_docs: dict[int, tuple[int, int]] = {}
        self._known: dict[int, np.ndarray] = {}
        first = 0
        for name in self.source_names:
            ids = [i for i, s in enumerate(self.manifest.shards) if s.source == name]
            lengths, at = [], first
            for i in ids:
                n = shard_lengths(self.manifest, i)
                if n is None:
                    n = self._lengths_from_shard(i)
                shard_docs[i] = (at, at + len(n))
                at += len(n)
                lengths.append(n)
            reader = SourceReader(name, self.manifest, ids, lengths, first, self.seed, self.seq_len, self.shuffle)
            self.sources.append(reader)
            first = at
        self._doc_lengths = np.concatenate([r.layout.doc_lengths for r in self.sources])
        self._doc_shard = np.concatenate([r.shard_ids[r.layout.doc_shard] for r in self.sources])
        self._shard_docs = shard_docs
        self._doc_offset = np.full(first, -1, dtype=np.int64)
        for i, offsets in self._known.items():
            lo, hi = shard_docs[i]
            self._doc_offset[lo:hi] = offsets
        self._paths = np.empty(len(self.manifest.shards), dtype=object)

    def _lengths_from_shard(self, i: int) -> np.ndarray:
        path = self.store.acquire(i)
        try:
            index = doc_index(path, self.manifest.shard_location(i).url)
        finally:
            self.store.release(i, wanted=True)
        self._known[i] = index.file_offsets
        return index.lengths

    def _open(self, i: int) -> None:
        """Acquire shard ``i`` and, at its first opening, place its documents' byte offsets."""
        self._paths[i] = path = self.store.acquire(i)
        lo, hi = self._shard_docs[i]
        if hi > lo and self._doc_offset[lo] < 0:
            index = doc_index(path, self.manifest.shard_location(i).url)
            if not np.array_equal(index.lengths, self._doc_lengths[lo:hi]):
                raise DataError(f"shard {self.manifest.shard_location(i)} does not match its document index")
            self._doc_offset[lo:hi] = index.file_offsets

    def next_batch(self) -> np.ndarray:
        """This rank's rows of the next global batch, (global_batch // dp_world, seq_len + 1) in the
        shards' unsigned token dtype (widen on the device: 2 or 4 bytes a token travel, not 8)."""
        started = time.perf_counter()
        if self.consumed_samples % self.global_batch:
            raise DataError(f"consumed_samples={self.consumed_samples} is not a multiple of global_batch={self.global_batch}")
        b = self.consumed_samples // self.global_batch
        plan = self._plan_for(b)
        rows = self.global_batch // self.dp_world
        batch = np.empty((rows, self.seq_len + 1), dtype=self.dtype)
        first_row = (b - plan.first_batch) * rows
        flat = memoryview(batch.reshape(-1).view(np.uint8))
        if self.store.bounded:
            self._read_held(plan, first_row, first_row + rows, flat)
        else:
            lo, hi = int(plan.row_start[first_row]), int(plan.row_start[first_row + rows])
            self._files.read(plan.paths[lo:hi], plan.starts[lo:hi], plan.stops[lo:hi], flat)
        self.consumed_samples += self.global_batch
        self.last_wait_s = time.perf_counter() - started
        return batch

    def _plan_for(self, b: int) -> _ReadPlan:
        """The plan holding batch ``b``; with a bounded store the plan after it is kept too (prefetch looks into it)."""
        while self._plans and not self._plans[0].first_batch <= b < self._plans[0].first_batch + self._plans[0].batches:
            if b < self._plans[0].first_batch:
                self._plans.clear()
            else:
                self._plans.pop(0)
        if not self._plans:
            self._plans.append(self._plan_batches(b))
        if self.store.bounded and len(self._plans) == 1:
            self._plans.append(self._plan_batches(self._plans[0].first_batch + self._plans[0].batches))
        return self._plans[0]

    def _plan_batches(self, first: int) -> _ReadPlan:
        """The pieces of this rank's rows for global batches ``first`` onwards, as many as
        ``PLAN_ROWS`` rows hold (working them out batch by batch costs more than copying)."""
        rows = self.global_batch // self.dp_world
        batches = max(1, min(PLAN_ROWS // rows, self._min_epoch_samples // self.global_batch))
        numbers = np.concatenate(
            [
                np.fromiter(sample_order.rank_slice(first + k, self.global_batch, self.dp_rank, self.dp_world), dtype=np.int64)
                for k in range(batches)
            ]
        )
        if self._blend is None:
            src, idx = np.zeros(len(numbers), dtype=np.int64), numbers
        else:
            src, idx = self._blend.lookup(numbers)
        parts = []
        for d, reader in enumerate(self.sources):
            mine = np.flatnonzero(src == d)
            if len(mine):
                r, docs, begins, takes = reader.pieces(idx[mine])
                parts.append((mine[r], docs, begins, takes))
        row, doc, begin, take = (np.concatenate(column) for column in zip(*parts))
        order = np.argsort(row, kind="stable")  # interleaves the sources' rows; each row's pieces keep column order
        row, doc, itemsize = row[order], doc[order], self.dtype.itemsize
        plan = _ReadPlan(
            first,
            batches,
            np.searchsorted(row, np.arange(len(numbers) + 1)),
            self._doc_shard[doc],
            doc,
            begin[order] * itemsize,
            take[order] * itemsize,
        )
        if not self.store.bounded:  # every shard stays at hand: place the byte ranges once for the whole plan
            for i in np.unique(plan.shard).tolist():
                self._open(i)
            starts = self._doc_offset[plan.doc] + plan.begin
            plan.paths, plan.starts = self._paths[plan.shard].tolist(), starts.tolist()
            plan.stops = (starts + plan.size).tolist()
        return plan

    def _read_held(self, plan: _ReadPlan, first_row: int, end_row: int, out: memoryview) -> None:
        """Read rows of the plan holding just the shards they need; then give back those the next batch
        does not read, and tell the store what comes next."""
        lo, hi = int(plan.row_start[first_row]), int(plan.row_start[end_row])
        need = set(np.unique(plan.shard[lo:hi]).tolist())
        began = need - self._held
        for i in sorted(began):
            self._open(i)
            self._held.add(i)
        starts = self._doc_offset[plan.doc[lo:hi]] + plan.begin[lo:hi]
        self._files.read(self._paths[plan.shard[lo:hi]].tolist(), starts.tolist(), (starts + plan.size[lo:hi]).tolist(), out)
        rows = end_row - first_row
        if end_row + rows < len(plan.row_start):
            following = plan.shard[hi : plan.row_start[end_row + rows]]
        else:
            following = self._plans[1].shard[: self._plans[1].row_start[rows]] if len(self._plans) > 1 else plan.shard[:0]
        keep = set(np.unique(following).tolist())
        upcoming = first_uses(np.concatenate([plan.shard[hi:]] + [p.shard for p in self._plans[1:]]))
        wanted = set(upcoming)
        for i in sorted(self._held - keep):
            self._files.forget(self._paths[i])
            self.store.release(i, wanted=i in wanted)
            self._held.discard(i)
        self.store.upcoming(upcoming, len(began))

    def source_consumed(self) -> dict[str, int]:
        """Samples taken from each source so far (all ranks together)."""
        if self._blend is None:
            return {self.source_names[0]: self.consumed_samples}
        counts = self._blend.consumed(self.consumed_samples)
        return {n: int(c) for n, c in zip(self.source_names, counts)}

    def state_dict(self) -> dict:
        state = {
            "consumed_samples": self.consumed_samples,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shuffle": self.shuffle.key,
        }
        if self._blend is not None:
            state["weights"] = dict(self.weights)
            state["source_consumed"] = self.source_consumed()
        return state

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("fingerprint", self.fingerprint), ("seed", self.seed), ("seq_len", self.seq_len)):
            if key not in state:
                raise DataError(f"data loader state lacks {key!r}; it was not written by this loader")
            if state[key] != mine:
                what = "the prepared data changed" if key == "fingerprint" else f"{key} changed"
                raise DataError(f"cannot resume: {what} since the checkpoint ({key} {state[key]!r} there, {mine!r} now)")
        saved_shuffle = state.get("shuffle", "global")  # written before there was a choice
        if saved_shuffle != self.shuffle.key:
            raise DataError(
                f"cannot resume: the sample order changed since the checkpoint (data.shuffle {saved_shuffle!r} there, "
                f"{self.shuffle.key!r} now); set data.shuffle and data.block_shards as they were"
            )
        if self._blend is not None and state.get("weights") != self.weights:
            raise DataError(f"cannot resume: blend weights changed ({state.get('weights')} there, {self.weights} now)")
        self.consumed_samples = int(state["consumed_samples"])

    def close(self) -> None:
        self._files.close()
        self.store.close()


def _shard_tokens(data: storage.Place, split: str, shard_index: int) -> tuple[Manifest, np.ndarray]:
    manifest = load_manifest(data, split)
    if not 0 <= shard_index < len(manifest.shards):
        raise DataError(f"{split} has {len(manifest.shards)} shards; index {shard_index} is out of range")
    store = shard_store(manifest)
    try:
        with pa.memory_map(store.acquire(shard_index), "r") as source:
            table = pa.ipc.open_file(source).read_all()
        tokens = table.column("tokens").combine_chunks()
        return manifest, np.asarray(tokens.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    finally:
        store.release(shard_index, wanted=False)
        store.close()


def eval_windows(data: storage.Place, split: str, shard_index: int, seq_len: int) -> np.ndarray:
    """int64 (n, seq_len + 1): the shard's documents in file order, concatenated and cut into
    non-overlapping windows; the remainder is dropped."""
    _, tokens = _shard_tokens(data, split, shard_index)
    n = len(tokens) // (seq_len + 1)
    return tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)


def shard_token_counts(data: storage.Place, split: str, shard_index: int, vocab_size: int) -> np.ndarray:
    """int64[vocab_size]: how often each token occurs in the shard."""
    _, tokens = _shard_tokens(data, split, shard_index)
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise DataError(f"{split} shard {shard_index} holds token id {int(tokens.max())} >= vocab_size {vocab_size}")
    return np.bincount(tokens, minlength=vocab_size).astype(np.int64)
