"""prepare() with near-duplicate removal and quality steps on a real local Ray cluster."""

import json

import numpy as np
import pyarrow as pa
import pytest

from rich.console import Console

from data_shards.config import DataConfig
from data_shards.inspect import inspect
from data_shards.manifest import load_manifest
from data_shards.prepare import prepare
from data_shards.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

WORDS = np.array(
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no more out up what about into than them can "
    "only other new some could time these two may then do first any my now such like our over man me even most made "
    "river city house water light stone field paper music garden window market letter winter summer mountain".split()
)


def _corpus(seed: int = 5, docs: int = 60) -> tuple[list[str], int]:
    """Distinct documents, then an edited copy (5% of words replaced in one span) of every third one."""
    rng = np.random.default_rng(seed)
    originals = [list(WORDS[rng.integers(0, len(WORDS), int(rng.integers(120, 200)))]) for _ in range(docs)]
    out = [" ".join(w) + "." for w in originals]
    copies = 0
    for words in originals[::3]:
        k = len(words) // 20
        start = int(rng.integers(0, len(words) - k))
        edited = words[:start] + list(WORDS[rng.integers(0, len(WORDS), k)]) + words[start + k :]
        out.append(" ".join(edited) + ".")
        copies += 1
    return out, copies


def _all_texts(data_url: str) -> list[str]:
    tok = Tokenizer.load(data_url)
    out = []
    for split in ("train", "val"):
        manifest = load_manifest(data_url, split)
        for entry in manifest.shards:
            table = pa.ipc.open_file(pa.OSFile(f"{data_url}/{split}/{entry.path}")).read_all()
            out.extend(tok.decode(t[:-1]) for t in table.column("tokens").to_pylist())
    return sorted(out)


def test_near_duplicates_are_removed_the_same_way_whatever_the_partitioning(local_ray, tmp_path):
    texts, copies = _corpus()
    inp = tmp_path / "in"
    inp.mkdir()
    half = len(texts) // 2
    for name, part in (("a.jsonl", texts[:half]), ("b.jsonl", texts[half:])):
        (inp / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    kept = {}
    for label, partition_mb in (("whole files", 512), ("split files", 0.01)):
        cfg = DataConfig(
            inputs=[str(inp / "*.jsonl")],
            output=str(tmp_path / label.replace(" ", "-")),
            vocab_size=300,
            tokenizer_sample_mb=1,
            partition_mb=partition_mb,
            filters=["normalize_unicode", "gopher_repetition", "near_dedup"],
        )
        prepare(cfg, seed=0, progress=False)
        manifest = load_manifest(cfg.output, "train")
        assert manifest.filters["near_dedup"]["dropped"] == copies, label
        assert manifest.filters["gopher_repetition"]["dropped"] == 0, label
        kept[label] = _all_texts(cfg.output)
        funnel = [(row.step, row.dropped, row.left) for row in manifest.funnel]
        assert funnel == [
            ("read", 0, len(texts)),
            ("normalize_unicode", 0, len(texts)),
            ("gopher_repetition", 0, len(texts)),
            ("empty_docs", 0, len(texts)),
            ("near_dedup", copies, len(texts) - copies),
        ]
    console = Console(record=True, width=160)
    console.print(inspect(cfg.output))
    shown = console.export_text()
    assert "funnel" in shown and "near_dedup" in shown
    assert len(kept["whole files"]) == len(texts) - copies
    assert kept["whole files"] == kept["split files"]
