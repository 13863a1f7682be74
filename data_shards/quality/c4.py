"""C4's line and document rules (Raffel et al. 2020, section 2.2, and the C4 reference code)."""

from __future__ import annotations

import re

from data_shards.config import C4

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def sentences(line: str) -> int:
    """Sentences in a line: runs of terminal punctuation followed by a space or the end, at least one."""
    return max(1, len(_SENTENCE_END.findall(line)))


def rule(spec: C4):
    def keep(text: str) -> str | None:
        kept: list[str] = []
        count = 0
        for line in text.splitlines():
            line = line.strip()
            tokens = line.split()
            if any(len(w) > spec.max_word_length for w in tokens):
                continue
            if spec.remove_citations:
                line = _CITATION.sub("", line)
            if spec.drop_lines_without_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(tokens) < spec.min_words_per_line:
                continue
            lower = line.lower()
            if spec.drop_lorem_ipsum and "lorem ipsum" in lower:
                return None
            if spec.drop_javascript_lines and "javascript" in lower:
                continue
            if spec.drop_curly_bracket and "{" in line:
                return None
            if spec.drop_policy_lines and any(p in lower for p in POLICY_PHRASES):
                continue
            count += sentences(line)
            kept.append(line)
        if count < spec.min_sentences:
            return None
        return "\n".join(kept).strip()

    return keep
