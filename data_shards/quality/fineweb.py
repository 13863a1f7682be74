"""FineWeb's own rules (Penedo et al. 2024, section 3.3)."""

from __future__ import annotations

from data_shards.config import FineWeb
from data_shards.quality.text import TERMINAL_PUNCTUATION, duplicates, words


def rule(spec: FineWeb):
    def keep(text: str) -> str | None:
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return None
        ratio = sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)
        if ratio < spec.min_line_punct_ratio and not (ratio == 0 and spec.line_punct_exclude_zero):
            return None
        if sum(len(line) <= spec.short_line_chars for line in lines) / len(lines) > spec.max_short_line_ratio:
            return None
        if duplicates(lines)[1] / max(1, len(text) - text.count("\n")) > spec.max_char_duplicates_ratio:
            return None
        if text.count("\n") / max(1, len(words(text))) > spec.max_newline_word_ratio:
            return None
        return text

    return keep
