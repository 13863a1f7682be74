"""Gopher's repetition and quality rules (Rae et al. 2021, appendix A1 and table A1)."""

from __future__ import annotations

import re
from collections import Counter

from data_shards.config import GopherQuality, GopherRepetition
from data_shards.quality.text import duplicates, is_symbol, words

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")


def top_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters of the most frequent word n-gram (joined by spaces) times its count."""
    counts = Counter(" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not counts:
        return 0
    gram, count = counts.most_common(1)[0]
    return len(gram) * count


def duplicate_ngram_chars(tokens: list[str], n: int) -> int:
    """Characters of word n-grams that repeat an earlier one; a repeat's words are not counted twice."""
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i <= len(tokens) - n:
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            chars += sum(map(len, gram))
            i += n
        else:
            seen.add(gram)
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
        tokens = words(text)
        for n, frac in top:
            if top_ngram_chars(tokens, n) / size > frac:
                return None
        for n, frac in dup:
            if duplicate_ngram_chars(tokens, n) / size > frac:
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
