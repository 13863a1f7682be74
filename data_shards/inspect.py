"""``kiln data inspect DATA_URL``: what a prepared dataset holds, as a rich renderable."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from data_shards.errors import DataError
from data_shards.loader import eval_windows
from data_shards.manifest import load_manifest
from data_shards.tokenizer import Tokenizer
from ops import storage

SAMPLE_TOKENS = 64


def _summary(manifests: dict) -> Table:
    table = Table(title="splits")
    for col in ("split", "shards", "docs", "tokens", "bytes", "dtype", "fingerprint"):
        table.add_column(col, justify="right" if col in ("shards", "docs", "tokens", "bytes") else "left")
    for split, m in manifests.items():
        table.add_row(
            split,
            str(len(m.shards)),
            f"{m.total_docs:,}",
            f"{m.total_tokens:,}",
            f"{sum(s.bytes for s in m.shards):,}",
            m.dtype,
            m.fingerprint,
        )
    return table


def _sources(manifests: dict) -> Table:
    table = Table(title="sources")
    for col in ("split", "source", "weight", "docs", "tokens"):
        table.add_column(col, justify="left" if col in ("split", "source") else "right")
    for split, m in manifests.items():
        for name, stats in sorted(m.sources.items()):
            table.add_row(split, name, f"{stats.weight:g}", f"{stats.docs:,}", f"{stats.tokens:,}")
    return table


def _counts(manifests: dict) -> Table:
    table = Table(title="filters and input errors")
    for col in ("kind", "name", "dropped", "changed / count"):
        table.add_column(col)
    m = manifests["train"]
    for name, c in sorted(m.filters.items()):
        table.add_row("filter", name, f"{c.get('dropped', 0):,}", f"{c.get('changed', 0):,}")
        for key, n in sorted(c.items()):
            if key.startswith("dropped:"):  # decontamination, per file of examples
                table.add_row("", f"  matching {key.removeprefix('dropped:')}", f"{n:,}", "")
    for name, n in sorted(m.errors.items()):
        table.add_row("input", name, "", f"{n:,}")
    return table


def _funnel(manifests: dict) -> Table:
    table = Table(title="funnel: documents read → documents in shards (train and val)")
    for col in ("step", "removed", "left", "of read"):
        table.add_column(col, justify="left" if col == "step" else "right")
    rows = manifests["train"].funnel
    read = rows[0].left if rows else 0
    for row in rows:
        removed = "" if row.step == "read" else f"{row.dropped:,}"
        table.add_row(row.step, removed, f"{row.left:,}", f"{row.left / read:.1%}" if read else "")
    return table


def inspect(data: storage.Place, samples: int = 3):
    """Manifest summary, per-source counts, filter/error counts and a few decoded samples."""
    manifests = {split: load_manifest(data, split) for split in ("train", "val")}
    train = manifests["train"]
    tok = Tokenizer.load(data)
    head = Text(
        f"{data}\ntokenizer: vocab {tok.vocab_size:,}, sha256 {tok.sha256[:16]}…, "
        f"bos {tok.bos_id} eos {tok.eos_id} pad {tok.pad_id}\n"
        f"config hash {train.config_hash}"
    )
    parts = [head, _summary(manifests), _sources(manifests), _counts(manifests)]
    if train.funnel:
        parts.append(_funnel(manifests))
    shown = 0
    for i in range(len(train.shards)):
        if shown >= samples:
            break
        try:
            windows = eval_windows(data, "train", i, SAMPLE_TOKENS - 1)
        except DataError as exc:
            parts.append(Text(f"shard {train.shards[i].path}: {exc}", style="red"))
            continue
        if len(windows):
            text = tok.decode(windows[0])
            parts.append(Panel(Text(text), title=f"{train.shards[i].path} · first {SAMPLE_TOKENS} tokens", expand=False))
            shown += 1
    return Group(*parts)
