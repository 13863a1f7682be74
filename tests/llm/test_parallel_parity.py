"""Loss-curve parity: 2-rank ZeRO-0/1/2/3, 2-stage pipeline, 2-way sequence-split and 2-way tensor-split runs
(and 4-rank 2 data-parallel x 2 sequence-parallel and 2 data-parallel x 2 tensor-parallel ones) against
single-process PyTorch.

Same seed, same global batch, same sample order: every layout must give the same loss at
every step.  Layouts differ only in the order of floating-point reductions (gradient
all-reduce, partitioned norms, accumulation), so the tolerance is fp32 round-off grown
over 20 optimizer steps: relative 2e-6 (measured: below 2e-7).
The consolidated checkpoint of each layout holds the reference's final weights, and a checkpoint
saved mid-run (asynchronously, while training went on) holds the weights of its own step.  A run
resumed from that mid-run checkpoint on its own layout repeats the second half bit for bit; a
pipelined checkpoint resumed on any other layout is refused in one line, before any rank starts.  A sequence split changes no
weight: its checkpoints resume with or without the split, and its Hugging Face export is the unsplit model.
A tensor split's checkpoint is merged into whole parameters and moments to resume without the split,
and whole ones are re-sliced to resume with it; its Hugging Face export is the unsplit model too.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as read_safetensors

from data_shards.loader import GlobalBatchLoader
from llm import checkpoint
from llm.checkpoint import load_model, load_model_state
from llm.export_hf import export_hf
from llm.hf_adapters import adapter_for
from llm.model import next_token_loss
from ops import storage
from ops.records import RunRecords
from support.kiln_cli import kiln_train

pytestmark = pytest.mark.slow

STEPS = 20
TOLERANCE = 2e-6
# Final weights, absolute: AdamW moves each weight by about lr (3e-3, normalised by the gradient's own
# scale) per step, so a reduction-order difference shows up in the weights as a fraction of lr, not of
# the weight.  Where a gradient is near zero, m / sqrt(v) magnifies its round-off, so a few weights
# carry differences far above the loss's relative 2e-6; 1e-5 is 1/300 of one step's move (measured:
# 2.5e-6 for ZeRO-3 with tied embeddings, below 4e-7 for the other layouts).
WEIGHT_TOLERANCE = 1e-5


LAYOUTS = {
    "zero0": {"zero_stage": 0},
    "zero1": {"zero_stage": 1},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "pipeline2": {"zero_stage": 1, "pipeline_stages": 2},
    "pipeline2_checkpointed": {"zero_stage": 0, "pipeline_stages": 2, "model": {"activation_checkpointing": True}},
    "zero3_tied": {"zero_stage": 3, "model": {"tie_embeddings": True}},
    "zero2_checkpointed": {"zero_stage": 2, "model": {"activation_checkpointing": True}},
    "sequence2_zero3": {"zero_stage": 3, "sequence_parallel": 2},
    "data2_sequence2": {"zero_stage": 2, "sequence_parallel": 2, "nproc": 4},
    "tensor2": {"zero_stage": 2, "tensor_parallel": 2},  # one data-parallel fp32 rank: ZeRO-0
    "data2_tensor2": {"zero_stage": 1, "tensor_parallel": 2, "nproc": 4},
}


def global_batch_loss(model, job, step_index):
    """Mean loss of ``model`` on global batch ``step_index`` (0-based) of the run's sample order."""
    g = job.train.global_batch
    loader = GlobalBatchLoader(job.data_url, "train", job.seed, job.model.seq_len, g, consumed_samples=step_index * g)
    batch = torch.from_numpy(loader.next_batch().astype(np.int64))
    with torch.no_grad():
        return next_token_loss(model(batch[:, :-1]), batch[:, 1:]).item()


@pytest.fixture(scope="module")
def layout_run(ranks, token_data, tmp_path_factory):
    """Each layout trained once for the module: its job, logged losses and the reference's (losses, model)."""
    runs = {}

    def run(layout):
        if layout not in runs:
            tmp = tmp_path_factory.mktemp(layout)
            train = {"nproc": 2, **LAYOUTS[layout]}
            job = ranks.job(tmp / "run", token_data, steps=STEPS, checkpoint_every=STEPS // 2, **train)
            reference = ranks.reference_run(job)
            proc = ranks.torchrun(job, tmp, nproc=train["nproc"])
            assert proc.returncode == 0, ranks.errors(proc)
            runs[layout] = job, [r["loss"] for r in RunRecords(job.run_dir).metrics()], reference
        return runs[layout]

    return run


def from_halfway(job, tmp_path, **train):
    """A copy of the run as if it had stopped after its mid-run checkpoint; the job, with ``train`` changes."""
    run = tmp_path / "run"
    shutil.copytree(job.run_dir, run)
    storage.remove(checkpoint.step_url(str(run), STEPS), recursive=True)
    storage.write_text(storage.join(str(run), "checkpoints/latest"), checkpoint.step_name(STEPS // 2) + "\n")
    return job.model_copy(update={"run_dir": str(run), "train": job.train.model_copy(update=train)})


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_matches_the_single_process_loss_curve(layout, layout_run):
    job, got, (expected, reference_model) = layout_run(layout)
    assert len(got) == STEPS
    worst = max(abs(g - e) / e for g, e in zip(got, expected))
    print(f"{layout}: max relative loss difference over {STEPS} steps {worst:.2e}")
    assert got == pytest.approx(expected, rel=TOLERANCE)
    assert got[-1] < got[0] - 0.3  # it really trained

    step, state = load_model_state(job.run_dir)
    assert step == STEPS
    reference_state = reference_model.state_dict()
    assert set(state) == set(reference_state)
    worst = max((state[name] - tensor).abs().max().item() for name, tensor in reference_state.items())
    print(f"{layout}: max absolute final weight difference {worst:.2e}")
    for name, tensor in reference_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=WEIGHT_TOLERANCE, msg=name)

    _, halfway = load_model(job.run_dir, STEPS // 2)  # the next step's loss comes from these weights
    assert global_batch_loss(halfway, job, STEPS // 2) == pytest.approx(got[STEPS // 2], rel=1e-5)


@pytest.mark.parametrize("layout", ["zero0", "zero3", "pipeline2"])
def test_a_run_resumed_on_its_own_layout_repeats_the_second_half_bit_for_bit(layout, layout_run, ranks, tmp_path):
    """ZeRO-2 is proven in test_training_run; here the layouts whose checkpoints DeepSpeed writes otherwise:
    one full optimizer copy (ZeRO-0), partitioned weights (ZeRO-3), one file set per stage (pipeline)."""
    job, got, _ = layout_run(layout)
    resumed = from_halfway(job, tmp_path)
    proc = ranks.torchrun(resumed, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    records = RunRecords(resumed.run_dir)
    again = records.metrics()[STEPS:]
    assert [r["step"] for r in again] == list(range(STEPS // 2 + 1, STEPS + 1))
    assert [r["loss"] for r in again] == got[STEPS // 2 :]
    assert [e["step"] for e in records.events() if e["event"] == "resume"] == [STEPS // 2]


def test_a_pipelined_checkpoint_resumed_on_another_layout_is_one_line_before_any_rank_starts(layout_run, tmp_path):
    job, _, _ = layout_run("pipeline2")
    other = from_halfway(job, tmp_path, pipeline_stages=1)
    config = {
        "run": {"dir": other.run_dir, "seed": other.seed},
        "data": {"output": other.data_url, "vocab_size": 512},
        "model": other.model.model_dump(mode="json"),
        "train": other.train.model_dump(mode="json", exclude_defaults=True),
    }
    events = RunRecords(other.run_dir).events()
    proc = kiln_train(config, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"kiln: error: checkpoint step {STEPS // 2} was saved by 2 ranks with pipeline_stages=2; a pipelined run "
        "resumes only on the same world size and layout (now 2 ranks, pipeline_stages=1)"
    ]
    assert RunRecords(other.run_dir).events() == events  # no rank started, no failure recorded
    assert not os.path.exists(os.path.join(other.run_dir, "config.yaml"))  # nothing written to the run


@pytest.mark.long
@pytest.mark.parametrize(
    ("layout", "change", "reshaped"),
    [
        # A sequence split changes no weight and no ZeRO partition: the checkpoint loads as saved.
        ("sequence2_zero3", {"sequence_parallel": 1}, False),
        ("zero3", {"sequence_parallel": 2}, False),
        # Tensor slices are merged into whole parameters and moments (ZeRO-0 tensor split to ZeRO-2 data
        # parallel), or whole ones re-sliced (the reverse).
        ("tensor2", {"tensor_parallel": 1}, True),
        ("zero2", {"tensor_parallel": 2}, True),
    ],
)
def test_a_run_resumed_with_another_split_continues_its_curve(layout, change, reshaped, layout_run, ranks, tmp_path):
    """The same numbers, summed in another order: the second half follows the uninterrupted curve."""
    job, got, _ = layout_run(layout)
    resumed = from_halfway(job, tmp_path, **change)
    proc = ranks.torchrun(resumed, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    records = RunRecords(resumed.run_dir)
    again = records.metrics()[STEPS:]
    assert [r["step"] for r in again] == list(range(STEPS // 2 + 1, STEPS + 1))
    assert [r["loss"] for r in again] == pytest.approx(got[STEPS // 2 :], rel=TOLERANCE)
    assert [(e["step"], e["reshaped"]) for e in records.events() if e["event"] == "resume"] == [(STEPS // 2, reshaped)]


@pytest.mark.parametrize("layout", ["sequence2_zero3", "tensor2"])
def test_the_hugging_face_export_of_a_split_run_is_the_unsplit_model(layout, layout_run, tmp_path):
    job, _, (_, reference_model) = layout_run(layout)
    assert export_hf(job.run_dir, str(tmp_path / "hf")) == STEPS
    exported = read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
    expected = adapter_for(job.model).state_dict(reference_model.state_dict(), job.model)
    assert set(exported) == set(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(torch.tensor(exported[name]), tensor, rtol=0, atol=WEIGHT_TOLERANCE, msg=name)
