"""Errors a config alone decides, found before any rank starts: one line, once.

Left to the ranks, each of them would print the same message and the launcher would add its
summary of the failed ranks.  Each check here is a pure function of a lower room applied to the
config and to what the data and the run folder already hold; the ranks keep their own checks for
what only they can see (their device, a damaged file).
"""

from __future__ import annotations

from data_shards.loader import check_cache_room
from data_shards.manifest import load_manifest
from launch.config import ConfigError, KilnConfig
from llm.checkpoint import latest_committed_step, read_commit
from llm.checkpoint_files import CheckpointError
from llm.layout import LayoutError, ParallelLayout


def check_before_launch(cfg: KilnConfig) -> None:
    """Every check a config alone decides; a ConfigError or DataError with one line names the key."""
    layout = run_layout(cfg)
    check_resume_layout(cfg, layout)
    manifest = load_manifest(cfg.data_location, "train")
    check_cache_room(manifest, manifest.source_names(), cfg.data.reading())


def run_layout(cfg: KilnConfig) -> ParallelLayout | None:
    """The layout the ranks will run, or None when only their device decides it (``train.precision=auto``
    on a layout whose ZeRO stage depends on the precision)."""
    try:
        if cfg.train.precision != "auto":
            return ParallelLayout.for_run(cfg.train, cfg.train.world_size, cfg.train.precision)
        fp32, bf16 = (ParallelLayout.for_run(cfg.train, cfg.train.world_size, p) for p in ("fp32", "bf16"))
    except LayoutError as error:
        raise ConfigError(f"train.nodes={cfg.train.nodes} x train.nproc={cfg.train.nproc}: {error}") from None
    return fp32 if fp32 == bf16 else None


def check_resume_layout(cfg: KilnConfig, layout: ParallelLayout | None) -> None:
    """The newest committed checkpoint of the run (the one a resume starts from) loads on ``layout``."""
    step = latest_committed_step(cfg.run_location)
    if step is None or layout is None:
        return
    try:
        record = read_commit(cfg.run_location, step)
    except (CheckpointError, FileNotFoundError):
        return  # damaged: the ranks pass it over for an older one, with a warning naming it
    from llm.deepspeed_files import reshape_route  # DeepSpeed itself: imported only for a run that resumes

    try:
        reshape_route(record, layout)
    except CheckpointError as error:
        raise ConfigError(str(error)) from None
