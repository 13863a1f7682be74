"""Typed configuration of the data stage (the ``data:`` section of a Kiln config)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


FilterConfig = Annotated[Union[StripMarkup, NormalizeUnicode, MinLength, MaskPII, DedupExact], Field(discriminator="name")]
FILTER_NAMES = ("strip_markup", "normalize_unicode", "min_length", "mask_pii", "dedup_exact")


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
