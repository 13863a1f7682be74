"""`kiln run` end to end through real Ray and 2 DeepSpeed ranks on CPU, and its skipping of finished stages."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from ops.records import RunRecords

pytestmark = pytest.mark.slow


def kiln(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_config):
    tmp = tmp_path_factory.mktemp("pipeline")
    path = tiny_config(tmp, train={"keep_checkpoints": 2}, eval={"batch_size": 8, "max_windows_per_shard": 16})
    first = kiln("run", str(path), cwd=tmp)
    assert first.returncode == 0, first.stdout + first.stderr
    return tmp, path, first


def test_run_writes_data_checkpoint_metrics_and_eval(tiny_run):
    tmp, _, first = tiny_run
    run = tmp / "run"
    assert (tmp / "data" / "train" / "manifest.json").exists()
    assert (tmp / "data" / "val" / "manifest.json").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    assert (run / "checkpoints" / "step-00000006" / "COMMITTED").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 6 and saved["run"]["dir"] == str(run)
    steps = [row["step"] for row in RunRecords(str(run)).metrics()]
    assert steps == [1, 2, 3, 4, 5, 6]
    result = json.loads((run / "eval" / "step-00000006.json").read_text())
    assert result["step"] == 6
    assert result["tasks"]["heldout"]["loss"] == result["loss"]
    assert "evaluation" in first.stdout and "unigram baseline" in first.stdout


def shard_tokens(data: Path, split: str) -> list[np.ndarray]:
    """Each shard's tokens in file order, read with pyarrow alone."""
    manifest = json.loads((data / split / "manifest.json").read_text())
    return [
        pc.list_flatten(pa.ipc.open_file(str(data / split / shard["path"])).read_all().column("tokens"))
        .to_numpy()
        .astype(np.int64)
        for shard in manifest["shards"]
    ]


def test_run_evaluation_equals_an_independent_computation_from_the_shards_and_the_weights(tiny_run):
    """The held-out numbers `kiln run` wrote, recomputed here from the shard files (pyarrow), the step's
    consolidated weights (one forward pass, torch's cross-entropy), the tokenizer's own decoding (bytes)
    and token counts of the train shards (numpy), with eval.max_windows_per_shard=16."""
    import sentencepiece as spm
    import torch
    import torch.nn.functional as F

    from llm.checkpoint import load_model

    tmp, path, _ = tiny_run
    cfg = yaml.safe_load(path.read_text())
    seq_len, vocab = cfg["model"]["seq_len"], cfg["data"]["vocab_size"]
    data = tmp / "data"
    windows = np.concatenate(
        [
            tokens[: min(len(tokens) // (seq_len + 1), 16) * (seq_len + 1)].reshape(-1, seq_len + 1)
            for tokens in shard_tokens(data, "val")
        ]
    )
    targets = windows[:, 1:]
    _, model = load_model(str(tmp / "run"), 6)
    with torch.no_grad():
        x = torch.from_numpy(windows)
        nll = F.cross_entropy(model(x[:, :-1]).reshape(-1, vocab).double(), x[:, 1:].reshape(-1), reduction="sum").item()
    pieces = spm.SentencePieceProcessor(model_file=str(data / "tokenizer" / "tokenizer.model"))
    n_bytes = sum(len(pieces.decode(row.tolist()).encode("utf-8")) for row in targets)
    counts = sum(np.bincount(tokens, minlength=vocab) for tokens in shard_tokens(data, "train")) + 1
    unigram_nll = -np.log(counts[targets] / counts.sum()).sum()

    result = json.loads((tmp / "run" / "eval" / "step-00000006.json").read_text())
    assert (result["examples"], result["tokens"], result["bytes"]) == (len(windows), targets.size, n_bytes)
    assert result["loss"] == pytest.approx(nll / targets.size, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / targets.size), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)
    assert result["unigram_loss"] == pytest.approx(unigram_nll / targets.size, rel=1e-9)
    assert result["unigram_bits_per_byte"] == pytest.approx(unigram_nll / math.log(2) / n_bytes, rel=1e-9)


def test_second_run_skips_every_stage_and_changes_nothing(tiny_run):
    tmp, path, _ = tiny_run
    before = snapshot(tmp / "data", tmp / "run")
    second = kiln("run", str(path), cwd=tmp)
    assert second.returncode == 0, second.stderr
    for stage in ("prepare: skipped", "train: skipped", "eval: skipped"):
        assert stage in second.stderr
    assert snapshot(tmp / "data", tmp / "run") == before


def test_more_steps_resume_from_the_committed_checkpoint(tiny_run, tmp_path):
    import shutil

    tmp, path, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)  # the module's run stays as `kiln run` left it for the other tests
    more = kiln("train", str(path), "train.steps=8", f"run.dir={run}", cwd=tmp)
    assert more.returncode == 0, more.stderr
    steps = [row["step"] for row in RunRecords(str(run)).metrics()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept == ["step-00000006", "step-00000008"]


def test_ckpt_verify_accepts_a_sound_run_and_flags_a_stale_latest_pointer(tiny_run, tmp_path):
    import shutil

    src, path, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(src / "run", run)
    ok = kiln("ckpt", "verify", str(run), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    committed = sorted(p.parent.name for p in (run / "checkpoints").glob("step-*/COMMITTED"))
    (run / "checkpoints" / "latest").write_text(committed[0] + "\n")
    stale = kiln("ckpt", "verify", str(run), cwd=tmp_path)
    assert stale.returncode == 1 and "does not name the newest committed step" in stale.stdout


def test_ckpt_prune_keeps_the_newest_committed_checkpoint(tiny_run, tmp_path):
    import shutil

    src, _, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(src / "run", run)
    newest = (run / "checkpoints" / "latest").read_text().strip()
    proc = kiln("ckpt", "prune", str(run), "--keep", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == [newest]


def test_changed_data_section_is_prepared_again_not_skipped(tiny_run, tmp_path):
    from launch.config import load_config
    from launch.stages import prepared_for

    _, path, _ = tiny_run
    assert prepared_for(load_config(str(path)))
    assert not prepared_for(load_config(str(path), ["data.vocab_size=500"]))
    assert not prepared_for(load_config(str(path), ["run.seed=8"]))


def test_generate_prints_the_prompt_and_its_continuation(tiny_run):
    tmp, _, _ = tiny_run
    proc = kiln("generate", str(tmp / "run"), "import os", "--max-tokens", "8", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("import os") and len(proc.stdout.strip()) > len("import os")
