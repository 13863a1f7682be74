"""The config a cluster job carries: the resolved config with the launcher and the job's shape filled in."""

from __future__ import annotations

import re

from pydantic import ValidationError

from launch.config import ConfigError, KilnConfig
from launch.render.options import LaunchOptions
from llm.layout import ParallelLayout


def job_config(cfg: KilnConfig, options: LaunchOptions, launcher: str) -> KilnConfig:
    """``cfg`` with ``train.launcher``, ``train.nodes`` and ``train.nproc`` (the GPUs per node, or the
    config's ranks per node for a CPU job) set for the job, validated again: a global batch that does
    not split over the job's ranks is an error now, not when the job starts."""
    tree = cfg.model_dump(mode="json")
    tree["run"]["dir"] = cfg.run_url
    tree["train"].update(launcher=launcher, nodes=options.nodes, nproc=options.gpus_per_node or cfg.train.nproc)
    try:
        job = KilnConfig.model_validate(tree)
        ParallelLayout.for_run(job.train, job.train.world_size, "fp32")  # the batch must split over the job's ranks
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"the job's config is invalid at {where}: {first['msg']}") from None
    except ValueError as e:
        raise ConfigError(f"{options.nodes} node(s) x {job.train.nproc} rank(s): {e}") from None
    return job


def job_name(cfg: KilnConfig, max_len: int = 40) -> str:
    """``kiln-<run name>`` (once) in lower-case letters, digits and dashes: valid for SLURM and as a Kubernetes name."""
    slug = re.sub(r"[^a-z0-9]+", "-", cfg.run.name.lower()).strip("-") or "run"
    name = slug if slug == "kiln" or slug.startswith("kiln-") else f"kiln-{slug}"
    return name[:max_len].rstrip("-")
