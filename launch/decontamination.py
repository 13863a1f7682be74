"""What `decontaminate` cleans the training data against when its `against` list is left empty: the
evaluation's own task files and the held-out inputs, so that no example Kiln later scores was trained on."""

from __future__ import annotations

from data_shards.config import DataConfig, Decontaminate
from data_shards.inputs import expand
from launch.config import KilnConfig


def evaluation_sources(cfg: KilnConfig) -> list[str]:
    """The file of every ``eval.tasks`` entry that has one, then every file ``data.val_inputs`` names."""
    task_files = [entry.path for entry in cfg.eval.tasks if isinstance(getattr(entry, "path", None), str)]
    held_out = [url for pattern in cfg.data.val_inputs for url, _ in expand(cfg.data_location.with_url(pattern))]
    return task_files + held_out


def with_evaluation_sources(cfg: KilnConfig) -> DataConfig:
    """``cfg.data`` with each `decontaminate` step that names no files given :func:`evaluation_sources`."""
    if not any(isinstance(step, Decontaminate) and not step.against for step in cfg.data.filters):
        return cfg.data
    sources = evaluation_sources(cfg)
    filters = [
        step.model_copy(update={"against": sources}) if isinstance(step, Decontaminate) and not step.against else step
        for step in cfg.data.filters
    ]
    return cfg.data.model_copy(update={"filters": filters})
