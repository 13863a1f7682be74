"""`kiln plan`: the capacity plan of a config on a given number and kind of GPU (computed by `ops.plan`) and its
object-store traffic, printed as rich tables."""

from __future__ import annotations

import math

from fsspec.core import split_protocol
from rich.console import Console
from rich.table import Table

from data_shards.shard_format import token_dtype
from data_shards.traffic import ASSUMED_DOC_TOKENS, PREFIX_GETS_PER_S, TrafficPlan, traffic_plan
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


def traffic_for(cfg: KilnConfig, gpus: int, gpus_per_node: int, tokens_per_s_per_gpu: float) -> dict[str, TrafficPlan]:
    """Object-store traffic of the run in both shuffle modes, on ceil(gpus / gpus_per_node) nodes."""
    if gpus_per_node < 1:
        raise ConfigError(f"kiln plan: --gpus-per-node={gpus_per_node} must be at least 1")
    per_node = min(gpus, gpus_per_node)
    return {
        mode: traffic_plan(
            nodes=math.ceil(gpus / per_node),
            gpus_per_node=per_node,
            tokens_per_s_per_gpu=tokens_per_s_per_gpu,
            seq_len=cfg.model.seq_len,
            token_bytes=4 if token_dtype(cfg.data.vocab_size) == "uint32" else 2,
            shard_bytes=int(cfg.data.shard_mb * 2**20),
            shuffle=mode,
            block_shards=cfg.data.block_shards,
        )
        for mode in ("block", "global")
    }


def config_shuffle(cfg: KilnConfig) -> str:
    protocol = split_protocol(cfg.data.output)[0] or "file"
    return cfg.data.reading().shuffle_mode(on_object_storage=protocol not in ("file", "local"))


def _bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def print_traffic(cfg: KilnConfig, plans: dict[str, TrafficPlan]) -> None:
    first = next(iter(plans.values()))
    table = Table(
        title=f"object-store traffic · {first.nodes} nodes × {first.gpus_per_node} GPUs · "
        f"{first.tokens_per_s_per_gpu:,.0f} tokens/s per GPU"
    )
    for column in ("data.shuffle", "GET/s on the data prefix", "per node per hour", "shards a node holds"):
        table.add_column(column, justify="left" if column == "data.shuffle" else "right")
    mine = config_shuffle(cfg)
    for mode, t in plans.items():
        limit = "within" if t.within_prefix_limit else "OVER"
        held = _bytes(t.node_cache_bytes) if t.node_cache_bytes is not None else "none (range reads)"
        table.add_row(
            f"{mode}{' ◀' if mode == mine else ''}",
            f"{t.gets_per_s:,.0f} ({limit} {PREFIX_GETS_PER_S:,})",
            _bytes(t.bytes_per_node_per_hour),
            held,
        )
    table.caption = (
        f"block: every node fetches every block, {cfg.data.block_shards} shards of {cfg.data.shard_mb:g} MiB; "
        f"global: one ranged GET per document piece, documents of ~{ASSUMED_DOC_TOKENS:,} tokens assumed"
    )
    Console().print(table)


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def print_plan(cfg: KilnConfig, gpus: int, gpu: str, mfu: float, gpus_per_node: int = 8) -> dict:
    p = plan_for(cfg, gpus, gpu, mfu)
    splits = {
        "pipeline stages": p["pipeline_stages"],
        "tensor-parallel": p["tensor_parallel"],
        "sequence-parallel": p["sequence_parallel"],
    }
    stages = "".join(f" · {n} {name}" for name, n in splits.items() if n > 1)
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
    table.add_row(
        f"time to train.steps={cfg.train.steps:,} ({p['train_tokens'] / 1e9:,.2f} B tokens)", _duration(p["time_to_steps_s"])
    )
    Console().print(table)
    print_traffic(cfg, traffic_for(cfg, gpus, gpus_per_node, p["tokens_per_s"] / gpus))
    return p
