"""Config sections owned by the Ray layer: where the cluster is, how evaluation fans out."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(default=None, description="Ray address to join; RAY_ADDRESS also works; none starts a local Ray")
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray (default: all)")
    entrypoint_num_cpus: float | None = Field(default=None, ge=0, description="CPUs reserved for a submitted job's driver")
    entrypoint_num_gpus: float | None = Field(default=None, ge=0, description="GPUs reserved for a submitted job's driver")
    job_stop_grace_s: int = Field(default=600, ge=1, description="how long a stopped job's ranks may take to save")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(default=8, ge=1)
    max_windows_per_shard: int | None = Field(default=None, ge=1, description="cap per val shard; none evaluates all")
    step: int | None = Field(default=None, description="checkpoint step to evaluate; none takes the latest")
