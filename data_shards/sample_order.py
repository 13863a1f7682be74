"""The global sample order, as pure functions of (documents, seed, seq_len, weights, n).

Megatron's recipe, per source and per epoch:

1. a seeded shuffle of the documents,
2. the shuffled documents concatenated and cut into ``seq_len + 1``-token windows;
   window ``w`` covers stream tokens ``[w*seq_len, w*seq_len + seq_len + 1)`` so that
   each window overlaps its neighbour by one token (the last target is the next input),
3. a seeded shuffle of the windows.

Epoch ``e`` of a source yields ``(T_e - 1) // seq_len`` samples where ``T_e`` is the
source's token count; sample ``j`` of a source lies in epoch ``j // samples_per_epoch``.
Several sources are interleaved by weight (:func:`blend_chunk`).  Nothing here depends
on world size, worker count or restarts.
"""
from __future__ import annotations

import hashlib

import numpy as np

from data_shards.errors import DataError

BLEND_CHUNK = 1 << 16


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A generator keyed by the run seed and a purpose, independent of numpy's global state."""
    key = "/".join(str(p) for p in (seed, *parts)).encode()
    return np.random.Generator(np.random.PCG64(int.from_bytes(hashlib.sha256(key).digest()[:16], "little")))


def samples_per_epoch(total_tokens: int, seq_len: int) -> int:
    return max(0, (int(total_tokens) - 1) // seq_len)


def epoch_doc_order(num_docs: int, seed: int, source: str, epoch: int) -> np.ndarray:
    """Shuffled document ids (positions in the manifest's shard order) for one epoch."""
    return rng_for(seed, source, epoch, "documents").permutation(num_docs).astype(np.int64)


def doc_starts(doc_lengths: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Stream offset of each document of ``order``, plus the stream length at the end."""
    starts = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(doc_lengths[order], out=starts[1:])
    return starts


def epoch_sample_perm(num_samples: int, seed: int, source: str, epoch: int) -> np.ndarray:
    """Shuffled window numbers for one epoch."""
    return rng_for(seed, source, epoch, "samples").permutation(num_samples).astype(np.int64)


def window_pieces(order: np.ndarray, starts: np.ndarray, doc_lengths: np.ndarray, window: int, seq_len: int):
    """The (document, first token, token count) pieces that make window ``window``."""
    pos = window * seq_len
    need = seq_len + 1
    k = int(np.searchsorted(starts, pos, side="right")) - 1
    pieces = []
    while need > 0:
        doc = int(order[k])
        offset = pos - int(starts[k])
        take = min(int(doc_lengths[doc]) - offset, need)
        if take > 0:
            pieces.append((doc, offset, take))
            need -= take
            pos += take
        k += 1
    return pieces


def batch_pieces(order: np.ndarray, starts: np.ndarray, windows: np.ndarray, seq_len: int):
    """Vectorised :func:`window_pieces` for many windows of one epoch.

    Returns int64 arrays, one entry per piece: the window's position in ``windows``, the
    column where the piece lands, the document, the first token inside the document,
    and the token count.  Pieces of a window are consecutive and in column order.
    """
    windows = np.asarray(windows, dtype=np.int64)
    first = windows * seq_len
    last = first + seq_len  # inclusive: a window has seq_len + 1 tokens
    k0 = np.searchsorted(starts, first, side="right") - 1
    k1 = np.searchsorted(starts, last, side="right") - 1
    counts = k1 - k0 + 1
    rows = np.repeat(np.arange(len(windows), dtype=np.int64), counts)
    ks = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(k0, counts)
    begin = np.maximum(starts[ks], first[rows])
    end = np.minimum(starts[ks + 1], last[rows] + 1)
    return rows, begin - first[rows], np.asarray(order)[ks], begin - starts[ks], end - begin


def window_tokens(docs: list[np.ndarray], order: np.ndarray, window: int, seq_len: int) -> np.ndarray:
    """Reference implementation of a window from in-memory documents (tests, small data)."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    starts = doc_starts(lengths, order)
    parts = [docs[d][o : o + n] for d, o, n in window_pieces(order, starts, lengths, window, seq_len)]
    return np.concatenate(parts).astype(np.int64)


def normalized_weights(weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise DataError(f"blend weights must be positive numbers, got {list(weights)}")
    return w / w.sum()


def blend_chunk(weights: np.ndarray, counts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The next ``size`` (source, per-source index) pairs after ``counts`` samples per source.

    Source ``d`` emits its ``k``-th sample at virtual time ``(k + 0.5) / w_d``; the blended
    sequence lists the events in time order (ties by source index).  Each source's share
    of any prefix is within one sample of its weight, and chunks computed from the counts
    at their start join into one exact sequence.
    """
    d_count = len(weights)
    ks = counts[:, None] + np.arange(size, dtype=np.int64)[None, :]
    times = (ks + 0.5) / weights[:, None]
    sources = np.broadcast_to(np.arange(d_count, dtype=np.int64)[:, None], ks.shape)
    order = np.lexsort((sources.ravel(), times.ravel()))[:size]
    return sources.ravel()[order].copy(), ks.ravel()[order].copy()


class BlendIndex:
    """Random access to the blended sequence.

    Chunks are generated forward from sample 0 once; only each chunk's starting counts
    are kept (``len(weights)`` integers per chunk), and the few chunks in use are
    regenerated from them, so memory does not grow with the number of samples read.
    """

    KEEP_CHUNKS = 4

    def __init__(self, weights: list[float], chunk: int = BLEND_CHUNK):
        self.weights = normalized_weights(weights)
        self.chunk = chunk
        self._starts = [np.zeros(len(self.weights), dtype=np.int64)]  # counts before chunk c
        self._recent: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _start(self, c: int) -> np.ndarray:
        """Per-source counts before chunk ``c``."""
        while len(self._starts) <= c:
            src, _ = self._generate(len(self._starts) - 1)
            self._starts.append(self._starts[-1] + np.bincount(src, minlength=len(self.weights)))
        return self._starts[c]

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        self._start(c)
        return self._generate(c)

    def _generate(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if c not in self._recent:
            if len(self._recent) >= self.KEEP_CHUNKS:
                self._recent.pop(next(iter(self._recent)))
            self._recent[c] = blend_chunk(self.weights, self._starts[c], self.chunk)
        return self._recent[c]

    def lookup(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, per-source sample index) of each global sample number."""
        samples = np.asarray(samples, dtype=np.int64)
        src = np.empty(len(samples), dtype=np.int64)
        idx = np.empty(len(samples), dtype=np.int64)
        chunk_no, within = np.divmod(samples, self.chunk)
        for c in np.unique(chunk_no).tolist():
            sel = chunk_no == c
            chunk_src, chunk_idx = self._chunk(c)
            src[sel] = chunk_src[within[sel]]
            idx[sel] = chunk_idx[within[sel]]
        return src, idx

    def consumed(self, n: int) -> np.ndarray:
        """Samples taken from each source among the first ``n``."""
        if n <= 0:
            return np.zeros(len(self.weights), dtype=np.int64)
        c, rest = divmod(n, self.chunk)
        if rest == 0:
            return self._start(c).copy()
        chunk_src, _ = self._chunk(c)
        return self._start(c) + np.bincount(chunk_src[:rest], minlength=len(self.weights))


def rank_slice(batch_index: int, global_batch: int, dp_rank: int, dp_world: int) -> range:
    """Global sample numbers that data-parallel rank ``dp_rank`` reads for global batch ``batch_index``."""
    if dp_world < 1 or not 0 <= dp_rank < dp_world:
        raise DataError(f"data-parallel rank {dp_rank} is outside a world of {dp_world}")
    if global_batch % dp_world:
        raise DataError(f"train.global_batch={global_batch} is not divisible by {dp_world} data-parallel ranks")
    per_rank = global_batch // dp_world
    start = batch_index * global_batch + dp_rank * per_rank
    return range(start, start + per_rank)
