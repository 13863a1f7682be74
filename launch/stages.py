"""The four stages as commands see them: prepare, train, eval, and run (all three, skipping finished ones)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cluster.connect import ray_session
from cluster.eval import eval_url, evaluate_run
from data_shards.prepare import is_prepared, prepare
from launch.accelerator import use_cpu_accelerator_without_cuda
from launch.config import ConfigError, KilnConfig
from launch.launchers import launcher_for
from launch.launchers.base import run_job
from llm.checkpoint import latest_committed_step
from ops import storage

console = Console(stderr=True)


PREPARED_WITH = "prepared-with.json"


def prepared_with(cfg: KilnConfig) -> dict:
    """What committed data was made from: the data section and the seed."""
    return {"data": cfg.data.model_dump(mode="json"), "seed": cfg.run.seed}


def prepared_for(cfg: KilnConfig) -> bool:
    """Committed data exists at data.output and was made from this very data section and seed."""
    options = cfg.storage.options
    record = storage.join(cfg.data_url, PREPARED_WITH)
    return (
        is_prepared(cfg.data_url, options)
        and storage.exists(record, options)
        and storage.read_json(record, options) == prepared_with(cfg)
    )


def prepare_stage(cfg: KilnConfig, progress: bool = True) -> dict:
    use_cpu_accelerator_without_cuda()
    with ray_session(cfg.cluster):
        summary = prepare(cfg.data, cfg.run.seed, cfg.storage.options, progress=progress)
    storage.write_json(storage.join(cfg.data_url, PREPARED_WITH), prepared_with(cfg), cfg.storage.options)
    console.print(f"prepare: wrote {cfg.data_url} ({_summary_line(summary)})")
    return summary


def _summary_line(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, (int, float, str)))


def train_stage(cfg: KilnConfig) -> int:
    use_cpu_accelerator_without_cuda()
    if not is_prepared(cfg.data_url, cfg.storage.options):
        raise ConfigError(f"data.output: no committed data at {cfg.data_url} — run `kiln prepare` with this config first")
    storage.write_text(storage.join(cfg.run_url, "config.yaml"), cfg.to_yaml(), cfg.storage.options)
    with launcher_for(cfg) as launcher:
        return run_job(launcher)


def eval_stage(cfg: KilnConfig) -> dict:
    use_cpu_accelerator_without_cuda()
    with ray_session(cfg.cluster):
        result = evaluate_run(cfg.run_url, cfg.data_url, cfg.model, cfg.eval, cfg.storage.options)
    print_eval_table(result, cfg.run_url)
    return result


def print_eval_table(result: dict, run_url: str) -> None:
    table = Table(title=f"held-out evaluation · {run_url} · step {result['step']}")
    table.add_column("model")
    table.add_column("loss (nats/token)", justify="right")
    table.add_column("perplexity", justify="right")
    table.add_column("bits per byte", justify="right")
    table.add_row("kiln", f"{result['loss']:.4f}", f"{result['perplexity']:.2f}", f"{result['bits_per_byte']:.4f}")
    table.add_row(
        "unigram baseline",
        f"{result['unigram_loss']:.4f}",
        f"{result['unigram_perplexity']:.2f}",
        f"{result['unigram_bits_per_byte']:.4f}",
    )
    table.caption = f"{result['tokens']:,} target tokens over {result['val_shards']} val shard(s)"
    Console().print(table)


def run_stages(cfg: KilnConfig, progress: bool = True) -> int:
    """prepare → train → eval; a stage whose committed output exists is skipped with one line."""
    options = cfg.storage.options
    if prepared_for(cfg):
        console.print(f"prepare: skipped — {cfg.data_url} already holds data committed from this data section")
    else:
        prepare_stage(cfg, progress=progress)
    done = latest_committed_step(cfg.run_url, options)
    if done is not None and done >= cfg.train.steps:
        console.print(f"train: skipped — {cfg.run_url} has a committed checkpoint at step {done} (train.steps={cfg.train.steps})")
    else:
        rc = train_stage(cfg)
        if rc != 0:
            return rc
        done = latest_committed_step(cfg.run_url, options)
    evaluated = eval_url(cfg.run_url, done)
    if cfg.eval.step is None and storage.exists(evaluated, options):
        console.print(f"eval: skipped — {evaluated} exists")
        print_eval_table(storage.read_json(evaluated, options), cfg.run_url)
    else:
        eval_stage(cfg)
    return 0
