"""Document cleaning steps named in ``data.filters``; each reports what it dropped or changed.

``dedup_exact`` and ``near_dedup`` are not per-document steps: prepare runs them across the whole
corpus (see :mod:`data_shards.dedup` and :mod:`data_shards.near_dedup`) on the text the other steps
produce. The quality rules live in :mod:`data_shards.quality`, one module a rule family.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any, Callable, Mapping

from data_shards.config import (
    C4,
    Decontaminate,
    DedupExact,
    FineWeb,
    GopherQuality,
    GopherRepetition,
    Language,
    MaskPII,
    MinLength,
    NearDedup,
    NormalizeUnicode,
    StripMarkup,
)
from data_shards.quality import c4, fineweb, gopher, language
from data_shards.quality.decontaminate import Contamination

_TAG = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->|</?[A-Za-z][^<>]*>", re.S | re.I)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_PHONE = re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]\d{3,4}(?![\w.])")

Step = Callable[[str], "str | None"]


def strip_markup(text: str) -> str:
    return html.unescape(_TAG.sub("", text))


def normalize_unicode(text: str, form: str = "NFC") -> str:
    return _CONTROL.sub("", unicodedata.normalize(form, text.replace("\r\n", "\n")))


def mask_pii(text: str, email: str = "<EMAIL>", phone: str = "<PHONE>", ip: str = "<IP>") -> str:
    text = _EMAIL.sub(email, text)
    text = _IPV4.sub(ip, text)
    return _PHONE.sub(phone, text)


CORPUS_STEPS = (DedupExact, NearDedup)


def _step(spec, input_options: Mapping[str, Any]) -> Step:
    if isinstance(spec, StripMarkup):
        return strip_markup
    if isinstance(spec, NormalizeUnicode):
        return lambda t: normalize_unicode(t, spec.form)
    if isinstance(spec, MinLength):
        return lambda t: t if len(t) >= spec.min_chars else None
    if isinstance(spec, MaskPII):
        return lambda t: mask_pii(t, spec.email, spec.phone, spec.ip)
    if isinstance(spec, GopherRepetition):
        return gopher.repetition_rule(spec)
    if isinstance(spec, GopherQuality):
        return gopher.quality_rule(spec)
    if isinstance(spec, C4):
        return c4.rule(spec)
    if isinstance(spec, FineWeb):
        return fineweb.rule(spec)
    if isinstance(spec, Language):
        return language.rule(spec)
    if isinstance(spec, Decontaminate):
        return Contamination(spec, input_options)
    raise TypeError(f"not a per-document filter: {spec!r}")


class FilterChain:
    """The per-document steps of ``data.filters`` in order, with per-step counts.

    Held-out (``val``) documents are not decontaminated: they are what training data is cleaned against.
    ``input_options`` are the storage options that reach input files (the decontamination sources).
    """

    def __init__(self, specs: list, split: str = "train", input_options: Mapping[str, Any] | None = None):
        wanted = [
            s for s in specs if not isinstance(s, CORPUS_STEPS) and not (split == "val" and isinstance(s, Decontaminate))
        ]
        self.steps = [(spec.name, _step(spec, input_options or {})) for spec in wanted]
        self._counts: dict[str, dict[str, int]] = {name: {"dropped": 0, "changed": 0} for name, _ in self.steps}

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """dropped and changed per step; decontamination adds ``dropped:FILE`` per examples file."""
        out = {name: dict(c) for name, c in self._counts.items()}
        for name, step in self.steps:
            if isinstance(step, Contamination):
                out[name].update({f"dropped:{f}": n for f, n in sorted(step.removed.items())})
        return out

    def __call__(self, text: str) -> str | None:
        for name, step in self.steps:
            out = step(text)
            if out is None:
                self._counts[name]["dropped"] += 1
                return None
            if out != text:
                self._counts[name]["changed"] += 1
            text = out
        return text
