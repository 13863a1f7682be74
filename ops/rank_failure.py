"""What launchers know about a rank that failed, as they record it in ``failure`` and ``restart`` events."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RankFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int | None = None
    host: str
    exit_code: int | None = None
    pid: int | None = None
    error: str | None = None

    def describe(self) -> str:
        """``rank 3 on host b failed with exit code -9``."""
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        how = f"exit code {self.exit_code}" if self.exit_code is not None else (self.error or "an error")
        return f"{who} on host {self.host} failed with {how}"
