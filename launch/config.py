"""The one YAML config that drives every stage: loading, dotted overrides, validation.

A config error is one line naming the file and the key, with the closest valid key
when the key is unknown, never a pydantic traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
import typing
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.config import ClusterConfig
from cluster.evals.config import EvalConfig
from data_shards.config import DataConfig
from llm.config import ModelConfig, TrainConfig
from llm.job import TrainJob
from llm.layout import check_split
from ops import storage
from ops.credentials import (
    REDACTED,
    MissingCredential,
    credentials_environment,
    has_user_info,
    restore_credentials,
    split_credentials,
)


# The train keys that shape the learning rate of past steps (train.steps only once a decay has started).
SCHEDULE_KEYS = {"lr", "min_lr", "warmup_steps", "schedule", "decay_steps", "decay_shape"}


class ConfigError(Exception):
    """A config file or override that cannot be used; the message is one line."""


RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="kiln", description="names the run's folder and its cluster jobs")
    dir: str = Field(default="", description="RUN_URL; defaults to runs/<name>")
    seed: int = 1234

    @field_validator("name")
    @classmethod
    def _a_name(cls, value: str) -> str:
        # It becomes a folder name and part of job names, scripts and manifests: a plain name, nothing to quote.
        if not RUN_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a run name; use letters, digits and ._- (not starting with '.')")
        return value


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=f"passed to fsspec for every URL; credentials in it are written as {REDACTED} (see ops.credentials)",
    )


def _user_info_key(tree: Any, path: str = "") -> str | None:
    """The dotted key of the first URL with user info in ``tree`` outside ``storage.options``."""
    if isinstance(tree, dict):
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in tree.items() if not (path == "" and k == "storage")]
    elif isinstance(tree, list):
        items = [(f"{path}.{i}", v) for i, v in enumerate(tree)]
    else:
        return path if has_user_info(tree) else None
    return next((found for key, value in items if (found := _user_info_key(value, key))), None)


class KilnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _check_split(self) -> "KilnConfig":
        check_split(self.model, self.train)
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_urls(cls, tree: Any) -> Any:
        """A URL's user info would be written wherever the URL is (records, scripts, manifests)."""
        key = _user_info_key(tree)
        if key:
            raise ValueError(
                f"{key} is a URL with user info (user:password@): give the URL without it and the credentials "
                "in storage.options (or the store's usual environment variables)"
            )
        return tree

    @property
    def run_url(self) -> str:
        return self.run.dir or f"runs/{self.run.name}"

    @property
    def data_url(self) -> str:
        return self.data.output

    @property
    def run_location(self) -> storage.Location:
        return storage.Location(self.run_url, self.storage.options)

    @property
    def data_location(self) -> storage.Location:
        return storage.Location(self.data_url, self.storage.options)

    def train_job(self) -> TrainJob:
        """What every rank of this config's training needs (a ConfigError when it cannot train)."""
        try:
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
        except ValidationError as e:
            raise ConfigError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def to_yaml(self) -> str:
        resolved = self.model_dump(mode="json")
        resolved["run"]["dir"] = self.run_url
        resolved["storage"]["options"] = split_credentials(self.storage.options)[0]
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


def _read_tree(path: str) -> dict:
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
    return tree


def _validated(tree: dict, overrides: list[str] | tuple[str, ...], source: str) -> KilnConfig:
    for override in overrides:
        apply_override(tree, override)
    section = tree.setdefault("storage", {})
    if isinstance(section, dict) and isinstance(section.setdefault("options", {}), dict):
        try:
            section["options"] = restore_credentials(section["options"], os.environ)
        except MissingCredential as e:
            raise ConfigError(f"{source}: {e}") from None
    try:
        cfg = KilnConfig.model_validate(tree)
    except ValidationError as e:
        errors = e.errors()
        # A misspelled key also leaves the right one missing: name the misspelling.
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(_describe(first, source)) from None
    # Every process this one starts (ranks, Ray's workers, a batch job) finds the credentials there.
    os.environ.update(credentials_environment(cfg.storage.options))
    return cfg


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> KilnConfig:
    """Read ``path`` (a local file or a URL), apply dotted overrides, merge back the credentials a saved config
    holds redacted (from ``ops.credentials.SECRETS_ENV``), validate. Raises ConfigError with one line."""
    return _validated(_read_tree(path), overrides, path)


SAVED_CONFIG = "config.yaml"
# What a run folder may describe. Whoever can write the folder (a bucket's other writers) must not
# decide where a command connects or what it runs: cluster, storage and train (launcher, ranks)
# come from the user's own overrides, environment and defaults instead.
RUN_FOLDER_SECTIONS = ("run", "data", "model", "eval")


def load_run_config(run_url: str, overrides: list[str] | tuple[str, ...] = ()) -> KilnConfig:
    """The run in ``run_url`` as its saved config describes it, taken as data only.

    Only the model, data, eval and run description are read from ``RUN_URL/config.yaml``; the run
    lives where the user found it (``run.dir`` is ``run_url``, whatever the file says); everything
    else is the user's: the dotted overrides given here, the environment (``RAY_ADDRESS``, AWS
    variables) and the defaults.
    """
    saved = storage.join(run_url, SAVED_CONFIG)
    tree = _read_tree(saved)
    kept = {section: tree[section] for section in RUN_FOLDER_SECTIONS if section in tree}
    run = kept.get("run")
    kept["run"] = {**(run if isinstance(run, dict) else {}), "dir": run_url}
    return _validated(kept, overrides, saved)
