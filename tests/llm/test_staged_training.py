"""Pretraining in stages on real DeepSpeed ranks: a warmup-stable-decay run, extended by a resume and
branched into a decay; runs started from its weights (train.init_from) on the same layout, and on
another layout with a longer context; bad sources refused before anything is written.

Scaled to the tiny model: the stable run has 12 steps (decay over the last 3, checkpoints every 3),
context extension goes from 32 to 128 tokens."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from data_shards.loader import GlobalBatchLoader, eval_windows
from llm.checkpoint import read_commit
from cluster.evals.likelihood import window_nll
from llm.init_from import parse
from ops.records import RunRecords

STABLE = dict(
    steps=12, schedule="wsd", decay_steps=3, decay_shape="linear", warmup_steps=2, lr=3e-2, min_lr=3e-3, checkpoint_every=3
)


def train(ranks, job, tmp_path, nproc: int = 2):
    proc = ranks.torchrun(job, tmp_path, nproc=nproc)
    assert proc.returncode == 0, ranks.errors(proc)
    return job


def losses(run_dir: str) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in RunRecords(run_dir).metrics()}


def events(run_dir: str, kind: str) -> list[dict]:
    return [e for e in RunRecords(run_dir).events() if e["event"] == kind]


def heldout_loss(run_dir: str, step: int, data_url: str, seq_len: int) -> float:
    """Mean next-token loss of the checkpoint's weights over the val split in windows of ``seq_len``."""
    from llm.checkpoint import load_model

    _, model = load_model(run_dir, step)
    nll, count = window_nll(model, eval_windows(data_url, "val", 0, seq_len))
    return nll / count


@pytest.fixture(scope="module")
def stable(ranks, token_data, tmp_path_factory):
    """The stable run: warmup, a constant peak until step 9, a linear decay over the last 3 steps."""
    tmp = tmp_path_factory.mktemp("stable")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_CACHE_DIR", str(tmp / "cache"))
        return train(ranks, ranks.job(tmp / "run", token_data, keep_checkpoints=4, **STABLE), tmp)


def test_init_from_parses_an_optional_step():
    assert parse("runs/a") == ("runs/a", None)
    assert parse("s3://bucket/runs/a@120") == ("s3://bucket/runs/a", 120)
    assert parse("s3://user@host/runs/a") == ("s3://user@host/runs/a", None)


def copy_checkpoint(run_dir: str, step: int, into) -> str:
    """A new run folder holding only committed step ``step`` of ``run_dir``: that run as if it had stopped there."""
    name = f"step-{step:08d}"
    shutil.copytree(f"{run_dir}/checkpoints/{name}", into / "checkpoints" / name)
    (into / "checkpoints" / "latest").write_text(name)
    return str(into)


@pytest.mark.parametrize(
    "change, says",
    [
        ({"dim": 64}, "model.dim=64 but the source checkpoint has 32"),
        ({"layers": 3}, "model.layers=3 but the source checkpoint has 2"),
        ({"kv_heads": 4}, "model.kv_heads=4 but the source checkpoint has 2"),
        ({"ffn_hidden": 80}, "model.ffn_hidden=80 but the source checkpoint has"),
        ({"tie_embeddings": True}, "model.tie_embeddings=True but the source checkpoint has False"),
    ],
)
def test_a_model_of_another_shape_is_named_by_its_field(ranks, change, says):
    from llm.checkpoint_record import CheckpointRecord
    from llm.config import ModelConfig
    from llm.init_from import shape_mismatch

    source = CheckpointRecord.model_construct(model=ModelConfig(**ranks.model), vocab_size=512)
    assert says in shape_mismatch(source, ModelConfig(**{**ranks.model, **change}), 512)
    assert shape_mismatch(source, ModelConfig(**{**ranks.model, "seq_len": 128, "rope_theta": 5e5}), 512) is None
    assert "vocabulary has 600 tokens" in shape_mismatch(source, ModelConfig(**ranks.model), 600)


def test_init_optimizer_needs_init_from():
    from llm.config import TrainConfig

    with pytest.raises(ValueError, match="train.init_optimizer=true needs train.init_from"):
        TrainConfig(init_optimizer=True)


@pytest.mark.slow
def test_extending_the_stable_phase_by_a_resume_reproduces_the_longer_run_bit_for_bit(ranks, stable, tmp_path):
    """A run planned for 6 steps (its decay would start at step 3) stops at step 3 and resumes with
    train.steps=12: every step matches the uninterrupted 12-step run."""
    short = train(ranks, ranks.job(tmp_path / "short", stable.data_url, **{**STABLE, "steps": 6}), tmp_path)
    extended = stable.model_copy(update={"run_dir": copy_checkpoint(short.run_dir, 3, tmp_path / "extended")})
    train(ranks, extended, tmp_path)
    assert [e["step"] for e in events(extended.run_dir, "resume")] == [3]
    before, after, uninterrupted = losses(short.run_dir), losses(extended.run_dir), losses(stable.run_dir)
    assert [before[s] for s in (1, 2, 3)] + [after[s] for s in range(4, 13)] == [uninterrupted[s] for s in range(1, 13)]
    assert before[6] != uninterrupted[6]  # the short run's own decay had started


def stage(base, run_dir, model: dict | None = None, **train):
    """A new run's job: ``base`` with another run folder, model fields and train fields."""
    return base.model_copy(
        update={
            "run_dir": str(run_dir),
            "model": base.model.model_copy(update=model or {}),
            "train": base.train.model_validate({**base.train.model_dump(), **train}),
        }
    )


def first_batch_loss_of_exported_weights(job, run_dir: str, tmp_path) -> float:
    """The loss the source's weights, exported to Hugging Face and run by transformers, give on the
    first global batch of ``job`` (its own seed and sample order)."""
    from transformers import LlamaForCausalLM

    from llm.export_hf import export_hf

    export_hf(run_dir, str(tmp_path / "hf"))
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32).eval()
    loader = GlobalBatchLoader(job.data_url, "train", job.seed, job.model.seq_len, job.train.global_batch)
    batch = torch.from_numpy(loader.next_batch().astype(np.int64))
    with torch.no_grad():
        logits = hf(input_ids=batch[:, :-1]).logits
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()))


@pytest.mark.slow
def test_init_from_starts_with_the_source_weights(ranks, stable, tmp_path):
    from ops.status import run_status

    job = stage(stable, tmp_path / "run", schedule="constant", steps=1, init_from=stable.run_dir)
    train(ranks, job, tmp_path)
    expected = first_batch_loss_of_exported_weights(job, stable.run_dir, tmp_path)
    assert losses(job.run_dir)[1] == pytest.approx(expected, rel=1e-5)
    origin = read_commit(job.run_dir, 1).origin
    assert (origin.run, origin.step, origin.optimizer) == (stable.run_dir, 12, False)
    assert origin.sha256 == {f.path: f.sha256 for f in read_commit(stable.run_dir, 12).files}
    assert run_status(job.run_dir).origin.step == 12


@pytest.mark.slow
def test_a_decay_branch_from_the_stable_phase_ends_below_the_stable_run(ranks, stable, tmp_path):
    branch = stage(
        stable,
        tmp_path / "branch",
        init_from=f"{stable.run_dir}@6",
        init_optimizer=True,
        warmup_steps=0,
        steps=3,
        decay_steps=3,
    )
    train(ranks, branch, tmp_path)
    decayed = heldout_loss(branch.run_dir, 3, stable.data_url, 32)
    at_peak = heldout_loss(stable.run_dir, 9, stable.data_url, 32)  # the stable run's 9th step, still at the peak
    assert decayed < at_peak


@pytest.mark.slow
def test_context_extension_on_another_layout_lowers_the_heldout_loss_at_the_new_length(ranks, stable, tmp_path):
    """From ZeRO-2 on 2 ranks to train.zero_stage=1 on 1 rank (which one fp32 rank runs as stage 0), weights
    and optimizer state, seq_len 32 -> 128 with a larger rope_theta; a restart with init_from still set
    resumes the new run's own checkpoint."""
    longer = stage(
        stable,
        tmp_path / "long",
        model={"seq_len": 128, "rope_theta": 40000.0},
        init_from=stable.run_dir,
        init_optimizer=True,
        nproc=1,
        zero_stage=1,
        schedule="constant",
        warmup_steps=0,
        lr=3e-3,
        steps=4,
        checkpoint_every=4,
    )
    train(ranks, longer, tmp_path, nproc=1)
    [started] = events(longer.run_dir, "init_from")
    assert started["reshaped"] and started["optimizer"] and started["step"] == 12
    record = read_commit(longer.run_dir, 4)
    assert (record.layout.world_size, record.model.seq_len, record.origin.step) == (1, 128, 12)
    assert heldout_loss(longer.run_dir, 4, stable.data_url, 128) < heldout_loss(stable.run_dir, 12, stable.data_url, 128)

    train(ranks, stage(longer, longer.run_dir, steps=5), tmp_path, nproc=1)
    assert [e["step"] for e in events(longer.run_dir, "init_from")] == [12]
    assert [e["step"] for e in events(longer.run_dir, "resume")] == [4]
    assert read_commit(longer.run_dir, 5).origin == record.origin


def kiln_train(tmp_path, capsys, source_job, init_from: str, **model) -> list[str]:
    """The error lines `kiln train` prints starting a new run from ``init_from``; it must write nothing."""
    import yaml

    from launch.cli import main

    config = {
        "run": {"dir": str(tmp_path / "new-run"), "seed": source_job.seed},
        "data": {"output": source_job.data_url},
        "model": {**source_job.model.model_dump(exclude_none=True), **model},
        "train": {**STABLE, "micro_batch": 2, "global_batch": 8, "init_from": init_from},
    }
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", str(path)]) != 0
    assert not (tmp_path / "new-run").exists()
    return capsys.readouterr().err.strip().splitlines()


def damaged_copy(run_dir: str, step: int, into) -> str:
    copy = copy_checkpoint(run_dir, step, into)
    record = read_commit(copy, step)
    target = into / "checkpoints" / f"step-{step:08d}" / record.files[0].path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return copy


@pytest.mark.slow
def test_a_bad_source_is_one_line_and_nothing_is_written_to_the_new_run(stable, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "empty"): ({}, "holds no committed checkpoint"),
        f"{stable.run_dir}@5": ({}, "has no committed checkpoint at step 5 (committed: 3, 6, 9, 12)"),
        stable.run_dir: ({"layers": 3}, "model.layers=3 but the source checkpoint has 2"),
        damaged_copy(stable.run_dir, 12, tmp_path / "damaged"): ({}, "does not match the sha256 the record lists"),
    }
    for init_from, (model, says) in cases.items():
        [line] = kiln_train(tmp_path, capsys, stable, init_from, **model)
        assert line.startswith(f"kiln: error: train.init_from={init_from}: ") and says in line, line
