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


def batch_pieces(order: np.ndarray, starts: np.ndarray, windows: np.ndarray, seq_len: int):
    """Where many windows of one epoch lie in the documents, all at once.

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
    times = _event_time(weights[:, None], ks)
    sources = np.broadcast_to(np.arange(d_count, dtype=np.int64)[:, None], ks.shape)
    order = np.lexsort((sources.ravel(), times.ravel()))[:size]
    return sources.ravel()[order].copy(), ks.ravel()[order].copy()


def _event_time(weights: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Virtual time of each source's ``ks``-th sample, computed exactly as :func:`blend_chunk` does."""
    return (ks + 0.5) / weights


def _events_until(weights: np.ndarray, t: float) -> np.ndarray:
    """Per source, how many of its events have a virtual time <= ``t``."""
    k = np.maximum(np.floor(t * weights - 0.5).astype(np.int64), -1)
    # the float estimate may be off by one either way; settle it on the exact event times
    k = np.where(_event_time(weights, k + 1) <= t, k + 1, k)
    k = np.where((k >= 0) & (_event_time(weights, np.maximum(k, 0)) > t), k - 1, k)
    return k + 1


def blend_counts(weights: np.ndarray, n: int) -> np.ndarray:
    """Per-source counts among the first ``n`` samples of the blended sequence, without generating it.

    The ``n``-th event's time is found by bisection over float64 values (their bit patterns
    order like the values); events tied at that time go in source order, as in :func:`blend_chunk`.
    """
    if n <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    # bit patterns of 0.0 and of a time by which every source has had n events
    lo, hi = 0, int(np.float64((n + 1) / weights.min()).view(np.int64))
    while lo < hi:  # smallest t with at least n events at or before it
        mid = (lo + hi) // 2
        if _events_until(weights, float(np.int64(mid).view(np.float64))).sum() >= n:
            hi = mid
        else:
            lo = mid + 1
    t = float(np.int64(lo).view(np.float64))
    before = _events_until(weights, float(np.nextafter(t, -np.inf)))
    at_t = _events_until(weights, t) - before
    take = n - int(before.sum())
    return before + np.minimum(at_t, np.maximum(take - (np.cumsum(at_t) - at_t), 0))


class BlendIndex:
    """Random access to the blended sequence.

    A chunk is generated from the per-source counts before it (:func:`blend_counts`, computed
    directly), so reading anywhere costs the same, and only the few chunks in use are kept.
    """

    KEEP_CHUNKS = 4

    def __init__(self, weights: list[float], chunk: int = BLEND_CHUNK):
        self.weights = normalized_weights(weights)
        self.chunk = chunk
        self._recent: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _start(self, c: int) -> np.ndarray:
        """Per-source counts before chunk ``c``."""
        return blend_counts(self.weights, c * self.chunk)

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if c not in self._recent:
            if len(self._recent) >= self.KEEP_CHUNKS:
                self._recent.pop(next(iter(self._recent)))
            self._recent[c] = blend_chunk(self.weights, self._start(c), self.chunk)
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
