"""``manifest.json``: the commit point of a prepared split, and its content fingerprint."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from data_shards.errors import DataError
from ops import storage

FORMAT_VERSION = 1
SPLITS = ("train", "val")
HEX_DIGEST_CHARS = frozenset("0123456789abcdef")


def _relative_file(value: str | None) -> str | None:
    """A manifest is untrusted input: a file it names must stay inside its split folder."""
    if value is None:
        return value
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "://" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"must be a plain relative path inside the split folder, got {value!r}")
    return value


def _sha256_hex(value: str | None) -> str | None:
    if value is None:
        return value
    if len(value) != 64 or not set(value) <= HEX_DIGEST_CHARS:
        raise ValueError(f"must be a sha256 hex digest (64 characters 0-9a-f), got {value[:80]!r}")
    return value


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # relative to the split folder
    bytes: int = Field(ge=0)
    sha256: str
    docs: int = Field(ge=0)
    tokens: int = Field(ge=0)
    source: str = "default"
    # Document-length index (relative to the split folder) and its sha256; see shard_format.lengths_bytes.
    index: str | None = None
    index_sha256: str | None = None

    _paths = field_validator("path", "index")(_relative_file)
    _digests = field_validator("sha256", "index_sha256")(_sha256_hex)


class SourceStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    docs: int = 0
    tokens: int = 0
    weight: float = 1.0


class FunnelStep(BaseModel):
    """One row of the funnel from documents read to documents in shards: a step, what it removed, what is left."""

    model_config = ConfigDict(extra="forbid")

    step: str
    dropped: int = Field(ge=0)
    left: int = Field(ge=0)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    split: str
    config_hash: str
    tokenizer_sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    dtype: str
    shards: list[ShardEntry]
    total_docs: int
    total_tokens: int
    sources: dict[str, SourceStats] = {}
    # name -> {"dropped": n, "changed": n}
    filters: dict[str, dict[str, int]] = {}
    # invalid_utf8, empty_docs, malformed_lines, missing_field
    errors: dict[str, int] = {}
    # Documents read, then left after each step in the order prepare applies them (both splits together).
    funnel: list[FunnelStep] = []
    # Where the split lives; set when loaded, not stored.
    _split: storage.Location = PrivateAttr(default_factory=lambda: storage.Location(""))

    _digest = field_validator("tokenizer_sha256")(_sha256_hex)

    @property
    def fingerprint(self) -> str:
        """Stable hash of what the sample order depends on: tokenizer and every shard's bytes."""
        content = {
            "format_version": self.format_version,
            "tokenizer_sha256": self.tokenizer_sha256,
            "dtype": self.dtype,
            "shards": [[s.path, s.sha256, s.docs, s.tokens, s.source] for s in self.shards],
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def split_location(self) -> storage.Location:
        return self._split

    def shard_location(self, i: int) -> storage.Location:
        return self._split.join(self.shards[i].path)

    def source_names(self) -> list[str]:
        """Sources in a fixed order: the manifest's ``sources`` table, else the shards' sources."""
        if self.sources:
            return sorted(self.sources)
        return sorted({s.source for s in self.shards})

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n"


def manifest_url(data: storage.PlaceT, split: str) -> storage.PlaceT:
    return storage.join(data, split, "manifest.json")


def is_prepared(data: storage.Place) -> bool:
    """True when both the train and the val manifest are committed."""
    return all(storage.exists(manifest_url(data, split)) for split in ("train", "val"))


def load_manifest(data: storage.Place, split: str) -> Manifest:
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    url = manifest_url(data, split)
    if not storage.exists(url):
        raise DataError(f"no committed {split} data at {data} ({url} is missing): run `kiln prepare` first")
    try:
        raw = storage.read_json(url)
        manifest = Manifest.model_validate(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{url} is not a valid Kiln manifest (not JSON: {exc.msg} at line {exc.lineno})") from None
    except ValidationError as exc:
        raise DataError(f"{url} is not a valid Kiln manifest ({_first_problem(exc)})") from None
    if manifest.format_version != FORMAT_VERSION:
        raise DataError(f"{url} has format version {manifest.format_version}; this Kiln reads {FORMAT_VERSION}")
    manifest._split = storage.join(storage.location(data), split)
    return manifest


def _first_problem(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "top level"
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def write_manifest(data: storage.Place, manifest: Manifest) -> None:
    """Write the commit point of a split: call only after every shard it names is written."""
    storage.write_text(manifest_url(data, manifest.split), manifest.to_json())
