"""Everything one training rank needs, as one JSON file the launcher writes and each rank reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_shards.config import ReadConfig
from llm.config import ModelConfig, TrainConfig
from llm.layout import check_split
from ops import storage


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
        if self.train.tensor_parallel > 1:
            raise ValueError(
                f"train.tensor_parallel={self.train.tensor_parallel}: training does not split layers yet "
                "(kiln plan counts it); use train.sequence_parallel or ZeRO-3 to spread a large model"
            )
        return self

    def save(self, path: str) -> None:
        storage.write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> "TrainJob":
        return cls.model_validate_json(storage.read_text(path))
