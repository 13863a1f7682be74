"""Per-rank reading of the global sample order, and whole-shard views for evaluation."""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from data_shards import sample_order
from data_shards.errors import DataError
from data_shards.manifest import Manifest, load_manifest
from data_shards.shard_cache import cache_dir, local_shard, shard_lengths
from data_shards.shard_format import doc_index
from data_shards.shard_files import ShardFiles

INDEX_VERSION = 1
PLAN_ROWS = 4096


@dataclass
class _Epoch:
    order: np.ndarray
    starts: np.ndarray
    perm: np.ndarray


class SourceReader:
    """One source of a split: its documents across shards and its per-epoch sample index."""

    def __init__(self, name: str, manifest: Manifest, shard_ids: list[int], seed: int, seq_len: int, storage_options):
        self.name = name
        self.seed = seed
        self.seq_len = seq_len
        self.manifest, self.shard_ids, self.storage_options = manifest, shard_ids, storage_options
        self.dtype = np.dtype(manifest.dtype)
        self.paths: list[str | None] = [None] * len(shard_ids)
        self._known_offsets: dict[int, np.ndarray] = {}
        lengths = [self._lengths(local_no) for local_no in range(len(shard_ids))]
        self.doc_shard = np.concatenate([np.full(len(n), s, dtype=np.int32) for s, n in enumerate(lengths)] or [np.zeros(0, np.int32)])
        self.doc_lengths = np.concatenate(lengths or [np.zeros(0, np.int64)])
        self._first_doc = np.concatenate([[0], np.cumsum([len(n) for n in lengths])]).astype(np.int64)
        # Byte offset of each document in its shard file, filled when the shard is first used.
        self.doc_offset = np.full(len(self.doc_lengths), -1, dtype=np.int64)
        for local_no, offsets in self._known_offsets.items():
            self.doc_offset[self._first_doc[local_no] : self._first_doc[local_no + 1]] = offsets
        self.total_tokens = int(self.doc_lengths.sum())
        self.samples_per_epoch = sample_order.samples_per_epoch(self.total_tokens, seq_len)
        if self.samples_per_epoch < 1:
            raise DataError(
                f"source {name!r} of {manifest.split_url} has {self.total_tokens} tokens, "
                f"fewer than seq_len+1={seq_len + 1}: add data or lower model.seq_len"
            )
        self._key = hashlib.sha256(
            f"{INDEX_VERSION}|{manifest.fingerprint}|{name}|{seed}|{seq_len}".encode()
        ).hexdigest()[:24]
        self._epochs: dict[int, _Epoch] = {}

    def _lengths(self, local_no: int) -> np.ndarray:
        """Document lengths of a shard: from its small index file when the manifest names one,
        else from the (then fetched and verified) shard itself."""
        i = self.shard_ids[local_no]
        lengths = shard_lengths(self.manifest, i, self.storage_options)
        if lengths is None:
            self.paths[local_no] = local_shard(self.manifest, i, self.storage_options)
            index = doc_index(self.paths[local_no], self.manifest.shard_url(i))
            self._known_offsets[local_no] = index.file_offsets
            lengths = index.lengths
        return lengths

    def _open_shard(self, local_no: int) -> None:
        """Fetch and verify a shard at its first use, and place its documents' byte offsets."""
        i = self.shard_ids[local_no]
        if self.paths[local_no] is None:
            self.paths[local_no] = local_shard(self.manifest, i, self.storage_options)
        index = doc_index(self.paths[local_no], self.manifest.shard_url(i))
        first, last = self._first_doc[local_no], self._first_doc[local_no + 1]
        if not np.array_equal(index.lengths, self.doc_lengths[first:last]):
            raise DataError(f"shard {self.manifest.shard_url(i)} does not match its document index")
        self.doc_offset[first:last] = index.file_offsets

    def epoch(self, e: int) -> _Epoch:
        """Epoch ``e``'s index; the two most recently used stay loaded (a batch can span two)."""
        if e not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[e] = self._load_or_build(e)
        return self._epochs[e]

    def _load_or_build(self, e: int) -> _Epoch:
        folder = cache_dir() / "sample-index"
        names = {part: folder / f"{self._key}-e{e:05d}-{part}.npy" for part in ("order", "starts", "perm")}
        if all(p.exists() for p in names.values()):
            try:
                return _Epoch(*(np.load(names[p], mmap_mode="r") for p in ("order", "starts", "perm")))
            except (ValueError, OSError):
                pass  # a damaged cache entry is rebuilt below
        order = sample_order.epoch_doc_order(len(self.doc_lengths), self.seed, self.name, e)
        starts = sample_order.doc_starts(self.doc_lengths, order)
        perm = sample_order.epoch_sample_perm(self.samples_per_epoch, self.seed, self.name, e)
        folder.mkdir(parents=True, exist_ok=True)
        for part, array in (("order", order), ("starts", starts), ("perm", perm)):
            tmp = folder / f".{names[part].name}.{uuid.uuid4().hex}.tmp.npy"
            np.save(tmp, array)
            os.replace(tmp, names[part])
        return _Epoch(order, starts, perm)

    def pieces(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where this source's ``samples`` lie in the shard files, one entry per piece (the part of a
        window inside one document): the sample's position in ``samples``, the local shard number,
        and the byte range in that shard.  Pieces come in sample order, each sample's in column
        order, so copying them one after another lays the windows out row by row.  Shards get
        fetched and verified here, at their first use."""
        itemsize = self.dtype.itemsize
        samples = np.asarray(samples, dtype=np.int64)
        epochs, within = np.divmod(samples, self.samples_per_epoch)
        parts = []
        for e in np.unique(epochs).tolist():
            ep = self.epoch(e)
            sel = np.flatnonzero(epochs == e)
            rows, _, docs, begins, takes = sample_order.batch_pieces(ep.order, ep.starts, ep.perm[within[sel]], self.seq_len)
            for local_no in np.unique(self.doc_shard[docs][self.doc_offset[docs] < 0]).tolist():
                self._open_shard(local_no)
            starts = self.doc_offset[docs] + begins * itemsize
            parts.append((sel[rows], self.doc_shard[docs], starts, starts + takes * itemsize))
        return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


@dataclass
class _ReadPlan:
    """Pieces of consecutive rows, ready to copy: rows ``r`` are pieces ``row_start[r]:row_start[r+1]``."""

    first_batch: int
    batches: int
    row_start: list[int]
    paths: list[str]
    starts: list[int]
    stops: list[int]


class GlobalBatchLoader:
    """This rank's slice of each global batch, in the run's global sample order.

    Global batch ``b`` is samples ``[b*G, (b+1)*G)``; rank ``r`` of ``W`` reads the
    contiguous block ``[b*G + r*G/W, b*G + (r+1)*G/W)``.  ``consumed_samples`` counts all
    ranks together, so the state is the same on every rank and a resume may change ``W``.
    """

    def __init__(
        self,
        data_url: str,
        split: str,
        seed: int,
        seq_len: int,
        global_batch: int,
        dp_rank: int = 0,
        dp_world: int = 1,
        storage_options: dict | None = None,
        consumed_samples: int = 0,
        blend: dict[str, float] | None = None,
    ):
        if seq_len < 1 or global_batch < 1:
            raise DataError(f"seq_len ({seq_len}) and global_batch ({global_batch}) must be positive")
        sample_order.rank_slice(0, global_batch, dp_rank, dp_world)
        self.manifest = load_manifest(data_url, split, storage_options)
        self.seed, self.seq_len, self.global_batch = int(seed), int(seq_len), int(global_batch)
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.fingerprint = self.manifest.fingerprint
        names = self.manifest.source_names()
        if not self.manifest.shards:
            raise DataError(f"{self.manifest.split_url} holds no documents: nothing to read for split {split!r}")
        weights = blend or {n: (self.manifest.sources[n].weight if n in self.manifest.sources else 1.0) for n in names}
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise DataError(f"blend names unknown source(s) {unknown}; the data has {names}")
        self.source_names = [n for n in names if n in weights]
        self.weights = {n: float(weights[n]) for n in self.source_names}
        self.sources = [
            SourceReader(
                n,
                self.manifest,
                [i for i, s in enumerate(self.manifest.shards) if s.source == n],
                self.seed,
                self.seq_len,
                storage_options,
            )
            for n in self.source_names
        ]
        self._blend = sample_order.BlendIndex([self.weights[n] for n in self.source_names]) if len(self.sources) > 1 else None
        self.dtype = self.sources[0].dtype
        self._min_epoch_samples = min(reader.samples_per_epoch for reader in self.sources)
        self._files = ShardFiles()
        self._ahead: _ReadPlan | None = None
        self.consumed_samples = int(consumed_samples)
        self.last_wait_s = 0.0

    def next_batch(self) -> np.ndarray:
        """This rank's rows of the next global batch, (global_batch // dp_world, seq_len + 1) in the
        shards' unsigned token dtype (widen on the device: 2 or 4 bytes a token travel, not 8)."""
        started = time.perf_counter()
        if self.consumed_samples % self.global_batch:
            raise DataError(
                f"consumed_samples={self.consumed_samples} is not a multiple of global_batch={self.global_batch}"
            )
        b = self.consumed_samples // self.global_batch
        plan = self._ahead
        if plan is None or not plan.first_batch <= b < plan.first_batch + plan.batches:
            plan = self._ahead = self._plan_batches(b)
        rows = self.global_batch // self.dp_world
        batch = np.empty((rows, self.seq_len + 1), dtype=self.dtype)
        first_row = (b - plan.first_batch) * rows
        self._copy(plan, first_row, first_row + rows, batch)
        self.consumed_samples += self.global_batch
        self.last_wait_s = time.perf_counter() - started
        return batch

    def _plan_batches(self, first: int) -> _ReadPlan:
        """The pieces of this rank's rows for global batches ``first`` onwards, as many as
        ``PLAN_ROWS`` rows hold (working them out batch by batch costs more than copying)."""
        rows = self.global_batch // self.dp_world
        batches = max(1, min(PLAN_ROWS // rows, self._min_epoch_samples // self.global_batch))
        numbers = np.concatenate([
            np.fromiter(sample_order.rank_slice(first + k, self.global_batch, self.dp_rank, self.dp_world), dtype=np.int64)
            for k in range(batches)
        ])
        return self._plan(numbers, first, batches)

    def _plan(self, numbers: np.ndarray, first_batch: int, batches: int) -> _ReadPlan:
        if self._blend is None:
            src, idx = np.zeros(len(numbers), dtype=np.int64), numbers
        else:
            src, idx = self._blend.lookup(numbers)
        parts = []
        for d, reader in enumerate(self.sources):
            mine = np.flatnonzero(src == d)
            if len(mine):
                r, shards, a, z = reader.pieces(idx[mine])
                parts.append((mine[r], np.asarray(reader.paths, dtype=object)[shards], a, z))
        rows, paths, starts, stops = (np.concatenate(column) for column in zip(*parts))
        order = np.argsort(rows, kind="stable")  # interleaves the sources' rows; each row's pieces keep column order
        rows, paths, starts, stops = rows[order], paths[order], starts[order], stops[order]
        row_start = np.searchsorted(rows, np.arange(len(numbers) + 1))
        return _ReadPlan(first_batch, batches, row_start.tolist(), paths.tolist(), starts.tolist(), stops.tolist())

    def _copy(self, plan: _ReadPlan, first_row: int, end_row: int, out: np.ndarray) -> None:
        """Read rows ``first_row:end_row`` of the plan into ``out`` (C-contiguous)."""
        lo, hi = plan.row_start[first_row], plan.row_start[end_row]
        flat = memoryview(out.reshape(-1).view(np.uint8))
        self._files.read(plan.paths[lo:hi], plan.starts[lo:hi], plan.stops[lo:hi], flat)

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
                raise DataError(
                    f"cannot resume: {what} since the checkpoint ({key} {state[key]!r} there, {mine!r} now)"
                )
        if self._blend is not None and state.get("weights") != self.weights:
            raise DataError(f"cannot resume: blend weights changed ({state.get('weights')} there, {self.weights} now)")
        self.consumed_samples = int(state["consumed_samples"])

    def close(self) -> None:
        self._files.close()


def _shard_tokens(data_url: str, split: str, shard_index: int, storage_options) -> tuple[Manifest, np.ndarray]:
    manifest = load_manifest(data_url, split, storage_options)
    if not 0 <= shard_index < len(manifest.shards):
        raise DataError(f"{split} has {len(manifest.shards)} shards; index {shard_index} is out of range")
    path = local_shard(manifest, shard_index, storage_options)
    with pa.memory_map(path, "r") as source:
        table = pa.ipc.open_file(source).read_all()
    tokens = table.column("tokens").combine_chunks()
    return manifest, np.asarray(tokens.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)


def eval_windows(data_url: str, split: str, shard_index: int, seq_len: int, storage_options=None) -> np.ndarray:
    """int64 (n, seq_len + 1): the shard's documents in file order, concatenated and cut into
    non-overlapping windows; the remainder is dropped."""
    _, tokens = _shard_tokens(data_url, split, shard_index, storage_options)
    n = len(tokens) // (seq_len + 1)
    return tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)


def shard_token_counts(data_url: str, split: str, shard_index: int, vocab_size: int, storage_options=None) -> np.ndarray:
    """int64[vocab_size]: how often each token occurs in the shard."""
    _, tokens = _shard_tokens(data_url, split, shard_index, storage_options)
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise DataError(f"{split} shard {shard_index} holds token id {int(tokens.max())} >= vocab_size {vocab_size}")
    return np.bincount(tokens, minlength=vocab_size).astype(np.int64)
