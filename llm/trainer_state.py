"""What a checkpoint carries besides tensors, as a registry of named parts.

A part has a name, ``state_dict()`` (JSON-able; it may be a collective, every rank captures the parts in
the same order) and ``load_state_dict(state)``.  The Trainer's own parts fill the typed fields of
``CheckpointRecord`` they name in ``record_fields``; any other part (``record_fields`` empty) is kept
under ``CheckpointRecord.parts[name]``, so a new part is one ``register`` call.  A part that a resumed
checkpoint does not hold keeps the state it started with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch.distributed as dist

from llm.checkpoint_record import CheckpointRecord, DataPosition, RngState, distinct_states, state_of_rank

if TYPE_CHECKING:
    from llm.trainer import Trainer


class StatePart(Protocol):
    name: str
    record_fields: tuple[str, ...]

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StateParts:
    """The ordered, named parts of a run's checkpointed state."""

    def __init__(self) -> None:
        self.parts: list[StatePart] = []

    def register(self, part: StatePart) -> None:
        if any(p.name == part.name for p in self.parts):
            raise ValueError(f"a state part named {part.name!r} is already registered")
        self.parts.append(part)

    def capture(self) -> dict[str, Any]:
        """Keyword arguments of ``CheckpointRecord``: the record fields of the parts, the others under ``parts``."""
        fields: dict[str, Any] = {"parts": {}}
        for part in self.parts:
            state = part.state_dict()
            if part.record_fields:
                fields.update(state)
            else:
                fields["parts"][part.name] = state
        return fields

    def restore(self, record: CheckpointRecord) -> None:
        for part in self.parts:
            if part.record_fields:
                part.load_state_dict({name: getattr(record, name) for name in part.record_fields})
            elif part.name in record.parts:
                part.load_state_dict(record.parts[part.name])


class PositionPart:
    """How far the run got: steps and tokens."""

    name = "position"
    record_fields = ("step", "tokens")

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.trainer.step, "tokens": self.trainer.tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.step, self.trainer.tokens = state["step"], state["tokens"]
        self.trainer.saved_step = state["step"]


class DataPart:
    """Where the run stood in its data."""

    name = "data"
    record_fields = ("data",)

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        loader = self.trainer.loader
        position = DataPosition(
            url=self.trainer.job.data_url,
            fingerprint=loader.fingerprint,
            consumed_samples=loader.consumed_samples,
            loader=loader.state_dict(),
        )
        return {"data": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.loader.load_state_dict(state["data"].loader)


class RngPart:
    """Every rank's random-number generators (a collective: the states are gathered)."""

    name = "rng"
    record_fields = ("rng", "rng_of_rank")

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def state_dict(self) -> dict[str, Any]:
        states: list[RngState | None] = [None] * self.world
        dist.all_gather_object(states, RngState.capture())
        rng, rng_of_rank = distinct_states(states)
        return {"rng": rng, "rng_of_rank": rng_of_rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state_of_rank(state["rng"], state["rng_of_rank"], self.rank).restore()


class OriginPart:
    """The checkpoint this run started from (``train.init_from``), if any."""

    name = "origin"
    record_fields = ("origin",)

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"origin": self.trainer.origin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.origin = state["origin"]
