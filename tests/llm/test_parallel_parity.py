"""Loss-curve parity: 2-rank ZeRO-0/1/2/3 and 2-stage pipeline runs against single-process PyTorch.

Same seed, same global batch, same sample order: every layout must give the same loss at
every step.  Layouts differ only in the order of floating-point reductions (gradient
all-reduce, partitioned norms, accumulation), so the tolerance is fp32 round-off grown
over 20 optimizer steps: relative 2e-6 (measured: below 2e-7).
The consolidated checkpoint of each layout holds the reference's final weights.
"""
import pytest
import torch

from llm.checkpoint import load_model_state
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


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_rank_layout_matches_single_process_loss_curve(layout, ranks, token_data, tmp_path):
    job = ranks.job(tmp_path / layout, token_data, steps=STEPS, checkpoint_every=1000, **LAYOUTS[layout])
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
