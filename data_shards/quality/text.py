"""Text pieces the quality rules share: words, lines, duplicate counting."""

from __future__ import annotations

import re
import unicodedata

# Words as a tokenizer sees them: runs of letters and digits (with inner apostrophes and hyphens),
# and runs of other non-space characters (punctuation) as words of their own.
_WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]+")

# Sentence-ending marks of the major scripts, with closing quotes.
TERMINAL_PUNCTUATION = tuple(".!?\"'。！？．｡؟۔।॥…")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def is_symbol(word: str) -> bool:
    """True for a word of punctuation or symbols only."""
    return all(unicodedata.category(ch)[0] in "PS" for ch in word)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of items seen before, their total characters), counting each repeat."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars
