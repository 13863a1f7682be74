"""The sample order's windows computed one at a time from documents held in memory: the plain reference
the vectorised production code (``sample_order.batch_pieces``) and the loader are checked against."""

from __future__ import annotations

import numpy as np

from data_shards.sample_order import doc_starts


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


def window_tokens(docs: list[np.ndarray], order: np.ndarray, window: int, seq_len: int) -> np.ndarray:
    """The tokens of window ``window`` of the stream of ``docs`` in ``order``."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    starts = doc_starts(lengths, order)
    parts = [docs[d][o : o + n] for d, o, n in window_pieces(order, starts, lengths, window, seq_len)]
    return np.concatenate(parts).astype(np.int64)
