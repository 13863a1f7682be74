"""Recorded runs for the status and dashboard tests: records written through RunRecords at fixed times."""

from __future__ import annotations

import pytest

from ops import storage
from ops.records import RunRecords

NOW = 1_700_000_000.0
STEP_S = 0.5
BEAT_S = 1.0
CONFIG = "run:\n  name: tiny\ntrain:\n  steps: 100\n  global_batch: 4\nmodel:\n  seq_len: 32\n"


def beat(
    rank: int,
    step: int = 40,
    age: float = 0.5,
    idle: float = 0.2,
    step_time: float = STEP_S,
    state: str = "running",
    host: str | None = None,
) -> dict:
    """A heartbeat ``age`` seconds old whose rank finished its last step ``idle`` seconds before it."""
    at = NOW - age
    return {
        "rank": rank,
        "step": step,
        "time": at,
        "last_step_at": at - idle,
        "started_at": NOW - 600,
        "step_time_s": step_time,
        "interval_s": BEAT_S,
        "state": state,
        "host": host or f"node-{rank}",
        "pid": 1000 + rank,
    }


def row(step: int) -> dict:
    return {
        "time": NOW - 100 + step * STEP_S,
        "step": step,
        "tokens": step * 128,
        "loss": 6.0 - step * 0.02,
        "lr": 3e-4,
        "tokens_per_s": 256.0,
        "mfu": None,
    }


class RecordedRuns:
    """Writes runs for tests; ``now`` is the time status is taken at."""

    now = NOW
    beat = staticmethod(beat)
    row = staticmethod(row)

    def __init__(self, root: str):
        self.root = root
        self.made = 0

    def make(self, events=(), beats=(), steps: int = 40, checkpoints: dict | None = None, evals=(), config: str = CONFIG):
        """``events``: (kind, seconds before ``now``, fields); ``checkpoints``: step → committed."""
        self.made += 1
        run = storage.join(self.root, f"run-{self.made}")
        storage.write_text(storage.join(run, "config.yaml"), config)
        records = RunRecords(run)
        for kind, ago, fields in events:
            records.event(kind, time=NOW - ago, **fields)
        for step in range(1, steps + 1):
            records.log_metrics(row(step))
        for b in beats:
            b = dict(b)
            records.heartbeat(b.pop("rank"), b.pop("step"), **b)
        for step, committed in (checkpoints or {}).items():
            folder = storage.join(run, f"checkpoints/step-{step:08d}")
            storage.write_text(storage.join(folder, "mp_rank_00_model_states.pt"), "x")
            if committed:
                storage.write_text(storage.join(folder, "COMMITTED"), "")
                storage.write_text(storage.join(run, "checkpoints/latest"), f"step-{step:08d}")
        for result in evals:
            storage.write_json(storage.join(run, f"eval/step-{result['step']:08d}.json"), result)
        records.close()
        return run


@pytest.fixture
def runs(tmp_path) -> RecordedRuns:
    return RecordedRuns(str(tmp_path))
