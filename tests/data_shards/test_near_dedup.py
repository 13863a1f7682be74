"""Near-duplicate removal: MinHash LSH recall on planted copies, and a kept set that does not depend on
how the corpus is split into partitions and buckets."""

import numpy as np
import pytest

from data_shards.config import NearDedup
from data_shards.near_dedup import MinHasher, band_pairs, candidate_pairs, cluster_drops

VOCAB = np.array([f"w{i}" for i in range(20_000)])
ZIPF_CDF = np.cumsum(1 / np.arange(1, len(VOCAB) + 1))
ZIPF_CDF /= ZIPF_CDF[-1]


def _words(rng, count: int) -> list[str]:
    """``count`` words drawn from a Zipf-like vocabulary, as in natural text."""
    return list(VOCAB[np.minimum(np.searchsorted(ZIPF_CDF, rng.random(count)), len(VOCAB) - 1)])


def _shingles(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _edit(rng, words: list[str]) -> list[str]:
    """A copy with 5-20% of its words replaced, as one span or scattered."""
    out = list(words)
    k = int(rng.uniform(0.05, 0.20) * len(out))
    fresh = _words(rng, k)
    if rng.random() < 0.5:
        start = int(rng.integers(0, len(out) - k))
        out[start : start + k] = fresh
    else:
        for i, w in zip(rng.choice(len(out), size=k, replace=False), fresh):
            out[i] = w
    return out


@pytest.fixture(scope="module")
def planted():
    """1,200 distinct documents, and an edited copy of every other one with its true 5-gram Jaccard."""
    rng = np.random.default_rng(7)
    originals = [_words(rng, int(rng.integers(150, 400))) for _ in range(1200)]
    docs = {i: " ".join(w) for i, w in enumerate(originals)}
    jaccard = {}
    for i in range(0, len(originals), 2):
        copy = _edit(rng, originals[i])
        a, b = _shingles(originals[i]), _shingles(copy)
        doc = len(docs)
        docs[doc] = " ".join(copy)
        jaccard[doc] = len(a & b) / len(a | b)
    return docs, jaccard


def _drops(docs: dict[int, str], spec: NearDedup, partitions: int, buckets: int) -> set[int]:
    ids = sorted(docs)
    maps = [band_pairs(((d, docs[d]) for d in part), spec, buckets) for part in np.array_split(ids, partitions)]
    return cluster_drops(candidate_pairs(*(m[b] for m in maps)) for b in range(buckets))


def test_copies_at_jaccard_08_or_more_are_removed_and_distinct_documents_kept(planted):
    docs, jaccard = planted
    drops = _drops(docs, NearDedup(), partitions=1, buckets=1)
    close = [d for d, j in jaccard.items() if j >= 0.8]
    assert len(close) >= 100
    recall = sum(d in drops for d in close) / len(close)
    distinct = [d for d in docs if d not in jaccard]
    false_removals = sum(d in drops for d in distinct) / len(distinct)
    assert recall >= 0.95, recall
    assert false_removals <= 0.005, false_removals


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("per_worker", [1, 2, 4])
def test_kept_set_is_the_same_whatever_the_partitioning(planted, workers, per_worker):
    docs, _ = planted
    subset = {d: docs[d] for d in [*range(150), *range(1200, 1275)]}  # 150 originals, 75 copies
    spec = NearDedup(bands=20, rows=4, signature_size=80)  # loose: larger clusters, chains across partitions
    reference = _drops(subset, spec, partitions=1, buckets=1)
    assert reference
    assert _drops(subset, spec, partitions=workers * per_worker, buckets=workers * per_worker + 1) == reference


def test_each_cluster_keeps_its_smallest_document_id():
    text = " ".join(VOCAB[:300])
    near = text.replace("w150 ", "changed ")
    docs = {42: near, 7: text, 99: text + " w1", 5: " ".join(VOCAB[1000:1300])}
    drops = _drops(docs, NearDedup(), partitions=2, buckets=3)
    assert drops == {42, 99}


def test_signature_agreement_estimates_jaccard():
    rng = np.random.default_rng(3)
    words = _words(rng, 400)
    copy = list(words)
    copy[100:160] = _words(rng, 60)
    a, b = _shingles(words), _shingles(copy)
    truth = len(a & b) / len(a | b)
    hasher = MinHasher(NearDedup(bands=64, rows=8, signature_size=512))
    estimate = float((hasher.signature(" ".join(words)) == hasher.signature(" ".join(copy))).mean())
    assert abs(estimate - truth) < 0.06


def test_short_documents_hash_whole_and_empty_ones_are_skipped():
    hasher = MinHasher(NearDedup())
    assert hasher.signature("") is None and hasher.signature("  ... ") is None
    assert (hasher.signature("Two words") == hasher.signature("two WORDS!")).all()
