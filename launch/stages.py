"""The four stages as commands see them: prepare, train, eval, and run (all three, skipping finished ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

from data_shards.config import READ_KEYS
from data_shards.inputs import check_output
from data_shards.manifest import is_prepared, load_manifest
from llm.devices import use_cpu_accelerator_without_cuda
from launch.config import ConfigError, KilnConfig
from launch.decontamination import with_evaluation_sources
from launch.launchers import launcher_for
from launch.launchers.base import run_job
from launch.preflight import check_before_launch
from llm.checkpoint import latest_committed_step
from ops import storage

if TYPE_CHECKING:
    from cluster.evals.report import EvalReport

# Ray, DeepSpeed, prepare and the evaluation room are imported where they are used: `kiln train` on one
# machine starts its ranks without them.
console = Console(stderr=True)


PREPARED_WITH = "prepared-with.json"


def prepared_with(cfg: KilnConfig) -> dict:
    """What committed data was made from: the data section and the seed."""
    return {"data": cfg.data.model_dump(mode="json", exclude=set(READ_KEYS)), "seed": cfg.run.seed}


def prepared_for(cfg: KilnConfig) -> bool:
    """Committed data exists at data.output and was made from this very data section and seed."""
    record = cfg.data_location.join(PREPARED_WITH)
    return is_prepared(cfg.data_location) and storage.exists(record) and storage.read_json(record) == prepared_with(cfg)


def prepare_stage(cfg: KilnConfig, progress: bool = True) -> dict:
    from cluster.connect import ray_session
    from data_shards.prepare import prepare

    use_cpu_accelerator_without_cuda()
    check_output(cfg.data_location)  # before a Ray cluster starts for nothing
    with ray_session(cfg.cluster):
        summary = prepare(with_evaluation_sources(cfg), cfg.run.seed, cfg.storage.options, progress=progress)
    storage.write_json(cfg.data_location.join(PREPARED_WITH), prepared_with(cfg))
    console.print(f"prepare: wrote {cfg.data_url} ({_summary_line(summary)})")
    return summary


def _summary_line(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str)))


def train_stage(cfg: KilnConfig) -> int:
    use_cpu_accelerator_without_cuda()
    if not is_prepared(cfg.data_location):
        raise ConfigError(f"data.output: no committed data at {cfg.data_url} — run `kiln prepare` with this config first")
    check_init_source(cfg)
    check_before_launch(cfg)
    storage.write_text(cfg.run_location.join("config.yaml"), cfg.to_yaml())
    with launcher_for(cfg) as launcher:
        return run_job(launcher)


def check_init_source(cfg: KilnConfig) -> None:
    """A run that starts from train.init_from: its source checked before anything is written to this run.
    A run with a committed checkpoint of its own resumes from that and never reads the source again."""
    if not cfg.train.init_from or latest_committed_step(cfg.run_location) is not None:
        return
    from llm import init_from

    vocab_size = load_manifest(cfg.data_location, "train").vocab_size
    origin = init_from.check_source(cfg.train, cfg.run_location, cfg.model, vocab_size)
    console.print(f"train: starting from step {origin.step} of {origin.run}")


def eval_stage(cfg: KilnConfig, follow: bool = False, skip_evaluated: bool = False) -> list[EvalReport]:
    """Evaluate the checkpoints ``eval.steps`` names, or with ``follow`` every new one until the run finishes."""
    from cluster.evals.run import evaluate_run

    use_cpu_accelerator_without_cuda()
    return evaluate_run(
        cfg.eval,
        cfg.cluster,
        cfg.run_location,
        cfg.data_location,
        cfg.train.log_to,
        follow=follow,
        skip_evaluated=skip_evaluated,
    )


def run_stages(cfg: KilnConfig, progress: bool = True) -> int:
    """prepare → train → eval; a stage whose committed output exists is skipped with one line."""
    check_output(cfg.data_location)  # an unreachable or unknown store is one line, not a traceback
    if prepared_for(cfg):
        console.print(f"prepare: skipped — {cfg.data_url} already holds data committed from this data section")
    else:
        prepare_stage(cfg, progress=progress)
    done = latest_committed_step(cfg.run_location)
    if done is not None and done >= cfg.train.steps:
        console.print(
            f"train: skipped — {cfg.run_url} has a committed checkpoint at step {done} (train.steps={cfg.train.steps})"
        )
    else:
        rc = train_stage(cfg)
        if rc != 0:
            return rc
    eval_stage(cfg, skip_evaluated=True)
    return 0
