"""`kiln plan`: the capacity plan of a config on a given number and kind of GPU, as a rich table."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from launch.config import ConfigError, KilnConfig
from llm.layout import ParallelLayout
from ops.plan import plan


def plan_for(cfg: KilnConfig, gpus: int, gpu: str, mfu: float) -> dict:
    try:
        layout = ParallelLayout.for_run(cfg.train, world_size=gpus, precision="bf16")  # bf16: what GPUs train in
        return plan(
            cfg.model,
            vocab_size=cfg.data.vocab_size,
            seq_len=cfg.model.seq_len,
            micro_batch=cfg.train.micro_batch,
            global_batch=cfg.train.global_batch,
            steps=cfg.train.steps,
            layout=layout,
            gpu=gpu,
            mfu=mfu,
            activation_checkpointing=cfg.model.activation_checkpointing,
        )
    except ValueError as e:
        raise ConfigError(f"kiln plan: {e}") from None


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def print_plan(cfg: KilnConfig, gpus: int, gpu: str, mfu: float) -> dict:
    p = plan_for(cfg, gpus, gpu, mfu)
    stages = f" · {p['pipeline_stages']} pipeline stages" if p["pipeline_stages"] > 1 else ""
    table = Table(title=f"plan · {cfg.run.name} · {gpus} × {gpu.upper()}{stages} · ZeRO-{p['zero_stage']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{p['params'] / 1e6:,.1f} M")
    table.add_row("training FLOPs per token", f"{p['flops_per_token'] / 1e9:,.2f} G")
    for stage, gb in p["model_states_gb_by_stage"].items():
        marker = " ◀" if stage == p["zero_stage"] else ""
        table.add_row(f"model states per GPU, ZeRO-{stage}", f"{gb:,.2f} GiB{marker}")
    table.add_row(f"activations per GPU (micro-batch {cfg.train.micro_batch})", f"{p['activations_gb']:,.2f} GiB")
    fits = "fits" if p["fits"] else "does NOT fit"
    table.add_row("total per GPU", f"{p['total_gb']:,.2f} of {p['gpu_memory_gb']:.0f} GiB ({fits})")
    table.add_row(f"tokens/s at {mfu:.0%} MFU", f"{p['tokens_per_s']:,.0f}")
    table.add_row("step time", f"{p['step_time_s']:.2f} s")
    table.add_row(f"time to train.steps={cfg.train.steps:,} ({p['train_tokens'] / 1e9:,.2f} B tokens)", _duration(p["time_to_steps_s"]))
    Console().print(table)
    return p
