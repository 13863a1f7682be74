"""The typed record of one committed checkpoint: what ``COMMITTED`` holds.

Everything Kiln needs besides the tensors lives here, as JSON: the step and tokens, the
parallel layout and model config it was trained with, where the data stood, every rank's
random-number state, and every file of the checkpoint with its size and sha256.  Readers
(resume, eval, export, generate, ``kiln ckpt``) trust only what this record lists.
"""

from __future__ import annotations

import base64
import posixpath
import random
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llm.config import ModelConfig
from llm.layout import ParallelLayout

RECORD_FORMAT = 1


class FileEntry(BaseModel):
    """One file of a checkpoint, relative to its step folder, as it was written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rank: int = Field(ge=0, description="the rank that wrote it")

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, path: str) -> str:
        """A record can come from anyone who can write the bucket: a path must stay inside the step folder."""
        normal = posixpath.normpath(path)
        if not path or path.startswith("/") or "\\" in path or normal != path or normal == ".." or normal.startswith("../"):
            raise ValueError(f"file path {path!r} is not a plain relative path inside the step folder")
        return path


class RngState(BaseModel):
    """The random-number generators of one rank (Python, numpy, torch CPU and CUDA)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    python: list[Any]
    numpy: list[Any]
    torch: str = Field(description="base64 of torch.get_rng_state()")
    cuda: str | None = None

    @classmethod
    def capture(cls) -> "RngState":
        version, words, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        cuda = _b64(torch.cuda.get_rng_state()) if torch.cuda.is_available() else None
        return cls(
            python=[version, list(words), gauss],
            numpy=[kind, keys.tolist(), pos, has_gauss, cached],
            torch=_b64(torch.get_rng_state()),
            cuda=cuda,
        )

    def restore(self) -> None:
        version, words, gauss = self.python
        random.setstate((version, tuple(words), gauss))
        kind, keys, pos, has_gauss, cached = self.numpy
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(_from_b64(self.torch))
        if self.cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(_from_b64(self.cuda))


def _b64(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _from_b64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


class DataPosition(BaseModel):
    """Where the run stood in its data: the loader's own state plus what readers want at a glance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    fingerprint: str
    consumed_samples: int = Field(ge=0)
    loader: dict[str, Any] = Field(description="the data loader's state_dict(), opaque here")


class InitOrigin(BaseModel):
    """Where a run started from when ``train.init_from`` named another run: that run's checkpoint and its files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str = Field(description="the source RUN_URL")
    step: int = Field(ge=0)
    sha256: dict[str, str] = Field(description="every file of the source checkpoint: path -> sha256")
    optimizer: bool = Field(description="the source's optimizer state was carried too")


class CheckpointRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = RECORD_FORMAT
    step: int = Field(ge=0)
    tokens: int = Field(ge=0)
    time: float = Field(description="when the checkpoint was committed (seconds since the epoch)")
    layout: ParallelLayout
    precision: Literal["fp32", "bf16"]
    model: ModelConfig
    vocab_size: int = Field(ge=1)
    config_hash: str
    data: DataPosition
    rng: list[RngState] = Field(min_length=1, description="the distinct RNG states of the ranks")
    rng_of_rank: list[int] = Field(description="index into rng for each rank")
    files: list[FileEntry] = Field(default_factory=list)
    origin: InitOrigin | None = Field(default=None, description="the checkpoint this run started from (train.init_from)")
    parts: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the state of the parts the trainer registered beyond these fields, by name"
    )

    def rng_for(self, rank: int) -> RngState:
        return state_of_rank(self.rng, self.rng_of_rank, rank)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)


def state_of_rank(rng: list[RngState], rng_of_rank: list[int], rank: int) -> RngState:
    """The state rank ``rank`` saved; a rank the saving run did not have takes rank 0's."""
    return rng[rng_of_rank[rank] if rank < len(rng_of_rank) else rng_of_rank[0]]


def distinct_states(states: list[RngState]) -> tuple[list[RngState], list[int]]:
    """``states`` by rank as (distinct states, index of each rank's): ranks usually share one state."""
    distinct: list[RngState] = []
    index: list[int] = []
    for state in states:
        if state not in distinct:
            distinct.append(state)
        index.append(distinct.index(state))
    return distinct, index
