"""Gopher's repetition and quality rules (Rae et al. 2021, appendix A1 and table A1)."""

from __future__ import annotations

import re

import numpy as np

from data_shards.config import GopherQuality, GopherRepetition
from data_shards.quality.text import duplicates, is_symbol, words

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


_MIX = np.uint64(0x9E3779B97F4A7C15)


class WordGrams:
    """A document's words as integer ids, so that n-grams become 64-bit keys computed by numpy."""

    def __init__(self, tokens: list[str]):
        index: dict[str, int] = {}
        self.ids = np.fromiter((index.setdefault(w, len(index)) for w in tokens), dtype=np.uint64, count=len(tokens))
        self.ids += np.uint64(1)
        lengths = np.fromiter((len(w) for w in index), dtype=np.int64, count=len(index))
        self.chars = np.concatenate([[0], np.cumsum(lengths[(self.ids - np.uint64(1)).astype(np.int64)])])

    def keys(self, n: int) -> np.ndarray:
        """One key per n-gram, in order; distinct n-grams get distinct keys but for 2**-64 chances."""
        count = len(self.ids) - n + 1
        key = self.ids[:count].copy()
        for k in range(1, n):
            key = key * _MIX + self.ids[k : k + count]
        return key

    def gram_chars(self, start: np.ndarray | int, n: int):
        """Characters of the words of the n-gram(s) starting at ``start``, without separators."""
        return self.chars[start + n] - self.chars[start]


def top_ngram_chars(grams: WordGrams, n: int) -> int:
    """Characters of the most frequent word n-gram (joined by spaces) times its count; among equally
    frequent n-grams, the one seen first."""
    if len(grams.ids) < n:
        return 0
    _, first, counts = np.unique(grams.keys(n), return_index=True, return_counts=True)
    best = counts.max()
    start = int(first[counts == best].min())
    return (int(grams.gram_chars(start, n)) + n - 1) * int(best)


def duplicate_ngram_chars(grams: WordGrams, n: int) -> int:
    """Characters of word n-grams that repeat an earlier one, scanning left to right and jumping over a
    repeat, so its words are not counted twice."""
    if len(grams.ids) < n:
        return 0
    keys = grams.keys(n)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] < np.arange(len(keys)))
    if not len(repeats):
        return 0
    start = int(repeats[0])  # every n-gram before it is new and none is jumped over
    seen = set(keys[:start].tolist())
    chars, i, keys = 0, start, keys.tolist()
    while i < len(keys):
        if keys[i] in seen:
            chars += int(grams.gram_chars(i, n))
            i += n
        else:
            seen.add(keys[i])
            i += 1
    return chars


def repetition_rule(spec: GopherRepetition):
    top = sorted(spec.top_ngrams.items())
    dup = sorted(spec.dup_ngrams.items())

    def keep(text: str) -> str | None:
        size = len(text)
        if not size:
            return None
        paragraphs = _PARAGRAPHS.split(text.strip())
        n, chars = duplicates(paragraphs)
        if n / len(paragraphs) > spec.dup_para_frac or chars / size > spec.dup_para_char_frac:
            return None
        lines = _LINES.split(text)
        n, chars = duplicates(lines)
        if n / len(lines) > spec.dup_line_frac or chars / size > spec.dup_line_char_frac:
            return None
        grams = WordGrams(words(text))
        for n, frac in top:
            if top_ngram_chars(grams, n) / size > frac:
                return None
        for n, frac in dup:
            if duplicate_ngram_chars(grams, n) / size > frac:
                return None
        return text

    return keep


def quality_rule(spec: GopherQuality):
    stop_words = frozenset(spec.stop_words)

    def keep(text: str) -> str | None:
        tokens = words(text)
        if not tokens:
            return None
        real = [w for w in tokens if not is_symbol(w)]
        if not spec.min_words <= len(real) <= spec.max_words or not real:
            return None
        mean_length = sum(map(len, real)) / len(real)
        if not spec.min_mean_word_length <= mean_length <= spec.max_mean_word_length:
            return None
        n = len(tokens)
        if text.count("#") / n > spec.max_symbol_word_ratio:
            return None
        if (text.count("...") + text.count("…")) / n > spec.max_symbol_word_ratio:
            return None
        lines = text.splitlines() or [""]
        if sum(line.lstrip().startswith(("•", "-")) for line in lines) / len(lines) > spec.max_bullet_lines_ratio:
            return None
        if sum(line.rstrip().endswith(("...", "…")) for line in lines) / len(lines) > spec.max_ellipsis_lines_ratio:
            return None
        if sum(any(c.isalpha() for c in w) for w in tokens) / n < spec.min_alpha_words_ratio:
            return None
        if len(stop_words.intersection(tokens)) < spec.min_stop_words:
            return None
        return text

    return keep
