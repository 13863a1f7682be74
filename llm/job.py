"""Everything one training rank needs, as one JSON file the launcher writes and each rank reads.

What leaves the launcher's process (the job file, Ray Train's ``train_loop_config``) holds the storage
credentials redacted; each rank merges them back from its environment (``ops.credentials``).
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_shards.config import ReadConfig
from llm.config import ModelConfig, TrainConfig
from llm.layout import check_split
from ops import storage
from ops.credentials import restore_credentials, split_credentials


class TrainJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_dir: str = Field(description="RUN_URL: checkpoints, metrics, heartbeats and events go here")
    data_url: str = Field(description="DATA_URL written by `kiln prepare`")
    read: ReadConfig = Field(default_factory=ReadConfig, description="sample order and shard cache of the data")
    seed: int
    storage_options: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = Field(description="hash of what a resumed checkpoint must agree with")
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _check_split(self) -> "TrainJob":
        check_split(self.model, self.train)
        return self

    @property
    def run(self) -> storage.Location:
        return storage.Location(self.run_dir, self.storage_options)

    @property
    def data(self) -> storage.Location:
        return storage.Location(self.data_url, self.storage_options)

    def shareable(self) -> dict[str, Any]:
        """This job as JSON-ready data for another process, its storage credentials redacted."""
        shared = self.model_dump(mode="json")
        shared["storage_options"] = split_credentials(self.storage_options)[0]
        return shared

    @classmethod
    def from_shared(cls, shared: dict[str, Any]) -> "TrainJob":
        """The job :meth:`shareable` gave, with the storage credentials of this process's environment."""
        job = cls.model_validate(shared)
        job.storage_options = restore_credentials(job.storage_options, os.environ)
        return job

    def save(self, path: str) -> None:
        storage.write_json(path, self.shareable())

    @classmethod
    def load(cls, path: str) -> "TrainJob":
        return cls.from_shared(storage.read_json(path))
