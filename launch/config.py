"""The one YAML config that drives every stage: loading, dotted overrides, validation.

A config error is one line naming the file and the key, with the closest valid key
when the key is unknown, never a pydantic traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config import ClusterConfig, EvalConfig
from data_shards.config import DataConfig
from llm.config import ModelConfig, TrainConfig
from llm.job import TrainJob
from ops import storage


# The train keys that shape the learning rate of past steps (train.steps only once a decay has started).
SCHEDULE_KEYS = {"lr", "min_lr", "warmup_steps", "schedule", "decay_steps", "decay_shape"}


class ConfigError(Exception):
    """A config file or override that cannot be used; the message is one line."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "kiln"
    dir: str = Field(default="", description="RUN_URL; defaults to runs/<name>")
    seed: int = 1234


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec for every URL")


class KilnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @property
    def run_url(self) -> str:
        return self.run.dir or f"runs/{self.run.name}"

    @property
    def data_url(self) -> str:
        return self.data.output

    def train_job(self) -> TrainJob:
        """What every rank of this config's training needs."""
        return TrainJob(
            run_dir=self.run_url,
            data_url=self.data_url,
            read=self.data.reading(),
            seed=self.run.seed,
            storage_options=self.storage.options,
            config_hash=self.training_hash(),
            model=self.model,
            train=self.train,
        )

    def to_yaml(self) -> str:
        resolved = self.model_dump(mode="json")
        resolved["run"]["dir"] = self.run_url
        return yaml.safe_dump(resolved, sort_keys=False)

    def training_hash(self) -> str:
        """Hash of what shaped a checkpoint's past, which a resume must agree with: the model, data, seed,
        batch and learning-rate schedule.  Not train.steps (a warmup-stable-decay run is extended by
        raising it), the layout, the launcher or activation checkpointing."""
        keyed = {
            "model": self.model.model_dump(mode="json", exclude={"activation_checkpointing"}),
            "data": self.data.output,
            "seed": self.run.seed,
            "global_batch": self.train.global_batch,
            "schedule": self.train.model_dump(mode="json", include=SCHEDULE_KEYS),
        }
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def apply_override(tree: dict, override: str, source: str = "command line") -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is read as YAML (``[1, 2]``, ``true``, ``3e-4``)."""
    if "=" not in override:
        raise ConfigError(f"{source}: override {override!r} is not KEY=VALUE (for example train.steps=50)")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{source}: override {override!r} has an empty key part")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {key!r}: {part!r} is not a section")
        node = child
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node[parts[-1]] = value


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any]:
    """Follow ``loc`` through sections, lists and tagged unions (such as ``eval.tasks`` entries).

    Returns the key path as a user writes it (union tags left out) and the type reached
    (None where ``loc`` leaves the typed tree).
    """
    shown: list[str] = []
    current: Any = model
    for part in loc:
        if typing.get_origin(current) is Annotated:
            current = typing.get_args(current)[0]
        if typing.get_origin(current) is list and isinstance(part, int):
            current = typing.get_args(current)[0]
            shown.append(str(part))
            continue
        if typing.get_origin(current) is Annotated:
            current = typing.get_args(current)[0]
        if typing.get_origin(current) in (Union, types.UnionType):
            tagged = [
                m
                for m in typing.get_args(current)
                if isinstance(m, type)
                and issubclass(m, BaseModel)
                and "type" in m.model_fields
                and part in typing.get_args(m.model_fields["type"].annotation)
            ]
            # pydantic names the union member it tried (a tag, or a type such as "list[int]"): not a key
            current = tagged[0] if tagged else None
            continue
        shown.append(str(part))
        if isinstance(current, type) and issubclass(current, BaseModel) and str(part) in current.model_fields:
            current = current.model_fields[str(part)].annotation
        else:
            current = None
    return shown, current


def _describe(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    shown, _ = _walk(KilnConfig, loc)
    dotted = ".".join(shown)
    if err["type"] == "extra_forbidden":
        parent_shown, parent = _walk(KilnConfig, loc[:-1])
        valid = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        parent_key = ".".join(parent_shown)
        prefix = parent_key + "." if parent_key else ""
        hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys here: {', '.join(valid)}"
        return f"{source}: unknown key '{dotted}' — {hint}"
    if err["type"] == "missing":
        return f"{source}: required key '{dotted}' is missing"
    if err["type"] == "value_error":
        message = err["msg"].removeprefix("Value error, ")
        return f"{source}: {dotted + ': ' if dotted else ''}{message}"
    given = err.get("input")
    return f"{source}: {dotted}: {err['msg']} (got {given!r})"


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> KilnConfig:
    """Read ``path`` (a local file or a URL), apply dotted overrides, validate. Raises ConfigError with one line."""
    if not storage.exists(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run, data, model, train, ...)")
    for override in overrides:
        apply_override(tree, override)
    try:
        return KilnConfig.model_validate(tree)
    except ValidationError as e:
        errors = e.errors()
        # A misspelled key also leaves the right one missing: name the misspelling.
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(_describe(first, path)) from None
