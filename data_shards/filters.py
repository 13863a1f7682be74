"""Document cleaning steps named in ``data.filters``; each reports what it dropped or changed.

``dedup_exact`` is not a per-document step: prepare runs it across the whole corpus
(see :mod:`data_shards.dedup`) on the text the other steps produce.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Callable

from data_shards.config import DedupExact, MaskPII, MinLength, NormalizeUnicode, StripMarkup

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


def _step(spec) -> Step:
    if isinstance(spec, StripMarkup):
        return strip_markup
    if isinstance(spec, NormalizeUnicode):
        return lambda t: normalize_unicode(t, spec.form)
    if isinstance(spec, MinLength):
        return lambda t: t if len(t) >= spec.min_chars else None
    if isinstance(spec, MaskPII):
        return lambda t: mask_pii(t, spec.email, spec.phone, spec.ip)
    raise TypeError(f"not a per-document filter: {spec!r}")


class FilterChain:
    """The per-document steps of ``data.filters`` in order, with per-step counts."""

    def __init__(self, specs: list):
        self.steps = [(spec.name, _step(spec)) for spec in specs if not isinstance(spec, DedupExact)]
        self.counts: dict[str, dict[str, int]] = {name: {"dropped": 0, "changed": 0} for name, _ in self.steps}

    def __call__(self, text: str) -> str | None:
        for name, step in self.steps:
            out = step(text)
            if out is None:
                self.counts[name]["dropped"] += 1
                return None
            if out != text:
                self.counts[name]["changed"] += 1
            text = out
        return text


def wants_dedup(specs: list) -> bool:
    return any(isinstance(spec, DedupExact) for spec in specs)
