"""Loss-curve parity: 2-rank ZeRO-0/1/2/3 and 2-stage pipeline runs against single-process PyTorch.

Same seed, same global batch, same sample order: every layout must give the same loss at
every step.  Layouts differ only in the order of floating-point reductions (gradient
all-reduce, partitioned norms, accumulation), so the tolerance is fp32 round-off grown
over 20 optimizer steps: relative 2e-6 (measured: below 2e-7).
The consolidated checkpoint of each layout holds the reference's final weights, and a checkpoint
saved mid-run (asynchronously, while training went on) holds the weights of its own step.
"""
import numpy as np
import pytest
import torch

from data_shards.loader import GlobalBatchLoader
from llm.checkpoint import load_model, load_model_state
from llm.model import next_token_loss
from ops.records import RunRecords

pytestmark = pytest.mark.slow

STEPS = 20
TOLERANCE = 2e-6


LAYOUTS = {
    "zero0": {"zero_stage": 0},
    "zero1": {"zero_stage": 1},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "pipeline2": {"zero_stage": 1, "pipeline_stages": 2},
    "pipeline2_checkpointed": {"zero_stage": 0, "pipeline_stages": 2, "model": {"activation_checkpointing": True}},
    "zero3_tied": {"zero_stage": 3, "model": {"tie_embeddings": True}},
    "zero2_checkpointed": {"zero_stage": 2, "model": {"activation_checkpointing": True}},
}


def global_batch_loss(model, job, step_index):
    """Mean loss of ``model`` on global batch ``step_index`` (0-based) of the run's sample order."""
    g = job.train.global_batch
    loader = GlobalBatchLoader(job.data_url, "train", job.seed, job.model.seq_len, g, consumed_samples=step_index * g)
    batch = torch.from_numpy(loader.next_batch().astype(np.int64))
    with torch.no_grad():
        return next_token_loss(model(batch[:, :-1]), batch[:, 1:]).item()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_rank_layout_matches_single_process_loss_curve(layout, ranks, token_data, tmp_path):
    job = ranks.job(tmp_path / layout, token_data, steps=STEPS, checkpoint_every=STEPS // 2, **LAYOUTS[layout])
    expected, reference_model = ranks.reference_run(job)
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    got = [r["loss"] for r in RunRecords(job.run_dir).metrics()]
    assert len(got) == STEPS
    worst = max(abs(g - e) / e for g, e in zip(got, expected))
    print(f"{layout}: max relative loss difference over {STEPS} steps {worst:.2e}")
    assert got == pytest.approx(expected, rel=TOLERANCE)
    assert got[-1] < got[0] - 0.3  # it really trained

    step, state = load_model_state(job.run_dir)
    assert step == STEPS
    reference_state = reference_model.state_dict()
    assert set(state) == set(reference_state)
    for name, tensor in reference_state.items():
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-5, msg=name)

    _, halfway = load_model(job.run_dir, STEPS // 2)  # the next step's loss comes from these weights
    assert global_batch_loss(halfway, job, STEPS // 2) == pytest.approx(got[STEPS // 2], rel=1e-5)
