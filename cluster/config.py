"""The config section owned by the Ray layer: where the cluster is (evaluation's own is in ``cluster.evals.config``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(
        default=None, description="Ray address to join; RAY_ADDRESS also works; none starts a local Ray"
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray (default: all)")
    entrypoint_num_cpus: float | None = Field(default=None, ge=0, description="CPUs reserved for a submitted job's driver")
    entrypoint_num_gpus: float | None = Field(default=None, ge=0, description="GPUs reserved for a submitted job's driver")
    job_stop_grace_s: int = Field(default=600, ge=1, description="how long a stopped job's ranks may take to save")
