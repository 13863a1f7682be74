"""Cloze multiple-choice task files made from held-out documents (`kiln eval make-cloze`).

An example's context is a stretch of a real val document and its true continuation
is the document's next tokens; the other choices are as many tokens taken from other
val documents.  Every cut falls where the text on its right starts with a space and the
text on its left does not end in whitespace: no token spans such a cut, so the context
and every choice encode after one another exactly as they stand alone, and each choice
keeps tokens of its own after the context.
"""

from __future__ import annotations

import json

import numpy as np

from data_shards.errors import DataError
from data_shards.manifest import load_manifest
from data_shards.shard_stores import shard_store
from data_shards.shard_format import read_docs
from data_shards.tokenizer import Tokenizer
from ops import storage


def token_texts(tokenizer: Tokenizer) -> list[str]:
    """The text each token id decodes to on its own."""
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def clean_cuts(doc: np.ndarray, texts: list[str], before: int, after: int) -> np.ndarray:
    """Positions ``i`` with at least ``before`` tokens left of them and ``after`` right, where token ``i``
    starts with a space and token ``i - 1`` does not end in whitespace."""
    starts_space = np.array([texts[t][:1] == " " for t in doc], dtype=bool)
    ends_plain = np.array([bool(texts[t]) and not texts[t][-1].isspace() for t in doc], dtype=bool)
    cuts = np.flatnonzero(starts_space[1:] & ends_plain[:-1]) + 1
    return cuts[(cuts >= before) & (cuts + after <= len(doc))]


def _usable(text: str) -> bool:
    return bool(text.strip()) and "\ufffd" not in text


def make_cloze(
    docs: list[np.ndarray],
    tokenizer: Tokenizer,
    n: int,
    context_tokens: int = 48,
    continuation_tokens: int = 8,
    choices: int = 4,
    seed: int = 0,
) -> list[dict]:
    """``n`` examples ``{"context", "choices", "label"}`` from token documents (end-of-sequence tokens excluded)."""
    if min(n, context_tokens, continuation_tokens) < 1 or choices < 2:
        raise DataError("make-cloze: --n, --context-tokens and --continuation-tokens must be at least 1, --choices at least 2")
    texts = token_texts(tokenizer)
    docs = [doc[doc != tokenizer.eos_id] for doc in docs]
    cuts = [clean_cuts(doc, texts, context_tokens, continuation_tokens) for doc in docs]
    usable = [i for i, c in enumerate(cuts) if len(c)]
    if len(usable) < choices:
        raise DataError(
            f"make-cloze needs {choices} val documents with {context_tokens + continuation_tokens}+ tokens "
            f"and a clean cut; found {len(usable)}"
        )
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        picked = rng.choice(usable, size=choices, replace=False)
        source, others = int(picked[0]), [int(d) for d in picked[1:]]
        cut = int(rng.choice(cuts[source]))
        context = tokenizer.decode(docs[source][cut - context_tokens : cut])
        texts_of = [tokenizer.decode(docs[source][cut : cut + continuation_tokens])]
        for other in others:
            at = int(rng.choice(cuts[other]))
            texts_of.append(tokenizer.decode(docs[other][at : at + continuation_tokens]))
        # lm-evaluation-harness reads an all-digit context as a choice index; skip those.
        if not _usable(context) or context.isdigit() or not all(map(_usable, texts_of)) or len(set(texts_of)) < choices:
            continue
        label = int(rng.integers(choices))
        distractors = texts_of[1:]
        out.append({"context": context, "choices": distractors[:label] + [texts_of[0]] + distractors[label:], "label": label})
    if len(out) < n:
        raise DataError(f"make-cloze found only {len(out)} of {n} examples in the val documents; ask for fewer")
    return out


def val_documents(data: storage.Place) -> list[np.ndarray]:
    manifest = load_manifest(data, "val")
    store = shard_store(manifest)
    docs: list[np.ndarray] = []
    try:
        for i in range(len(manifest.shards)):
            docs.extend(np.array(doc) for doc in read_docs(store.acquire(i)))  # copies: the cache may evict the file
            store.release(i, wanted=False)
    finally:
        store.close()
    return docs


def write_cloze(
    data: storage.Place,
    out: storage.Place,
    n: int,
    context_tokens: int = 48,
    continuation_tokens: int = 8,
    choices: int = 4,
    seed: int = 0,
) -> int:
    """Build a cloze task from DATA_URL's val split and write it as JSONL (in one write); returns the count."""
    tokenizer = Tokenizer.load(data)
    examples = make_cloze(val_documents(data), tokenizer, n, context_tokens, continuation_tokens, choices, seed)
    storage.write_text(out, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    return len(examples)
