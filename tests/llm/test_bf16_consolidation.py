"""bf16 training (the GPU default) run on CPU ranks: consolidation returns the fp32 master weights, and a bf16
ZeRO-0 checkpoint refuses another layout in one line per rank."""

import pytest
import torch

from llm import checkpoint
from llm.deepspeed_files import trained_weights
from ops import storage

pytestmark = pytest.mark.slow

LAYOUTS = {
    "zero0": {"zero_stage": 0},
    "zero0_tied": {"zero_stage": 0, "model": {"tie_embeddings": True}},
    "zero2": {"zero_stage": 2},
    "pipeline2": {"zero_stage": 1, "pipeline_stages": 2},
    "sequence2": {"zero_stage": 2, "sequence_parallel": 2},
}


def bf16_weights(run_dir: str, step: int) -> dict[str, torch.Tensor]:
    folder = storage.filesystem(checkpoint.step_url(run_dir, step))[1]
    return trained_weights(folder, checkpoint.read_commit(run_dir, step))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_consolidated_weights_are_fp32_masters_of_the_bf16_model(layout, ranks, token_data, tmp_path):
    job = ranks.job(tmp_path / layout, token_data, steps=3, checkpoint_every=3, precision="bf16", **LAYOUTS[layout])
    proc = ranks.torchrun(job, tmp_path)
    assert proc.returncode == 0, ranks.errors(proc)
    step, state = checkpoint.load_model_state(job.run_dir)
    trained = bf16_weights(job.run_dir, step)
    assert set(state) == set(trained)
    assert all(trained[k].dtype == torch.bfloat16 for k in trained)
    finer = 0
    for name, tensor in state.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor.to(torch.bfloat16), trained[name]), name  # the bf16 model is the rounded master
        finer += int((tensor != tensor.to(torch.bfloat16).float()).sum())
    assert finer > 0.5 * sum(t.numel() for t in state.values())  # and the masters carry more precision
    if layout == "zero0":  # the same run, resumed on another ZeRO stage, is refused before anything loads
        other = job.model_copy(update={"train": job.train.model_copy(update={"steps": 4, "zero_stage": 2})})
        proc = ranks.torchrun(other, tmp_path)
        assert proc.returncode != 0
        expected = (
            "checkpoint step 3 is a bf16 ZeRO-0 checkpoint of 2 ranks; it resumes only as bf16 ZeRO-0 "
            "(now 2 ranks, zero_stage=2)"
        )
        assert sorted(line for line in proc.stderr.splitlines() if line.startswith("rank ")) == [
            f"rank {rank}: {expected}" for rank in (0, 1)
        ], ranks.errors(proc)
        assert "llm/trainer.py" not in proc.stderr  # no rank printed a traceback (torchrun's summary of them follows)
        assert checkpoint.committed_steps(job.run_dir) == [3]
