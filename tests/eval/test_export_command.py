"""`kiln export hf` as a user runs it, on the run `kiln train` made (checkpoints at steps 3 and 6)."""

import json

import pytest
import torch
from safetensors.numpy import load_file as read_safetensors

from data_shards.loader import eval_windows
from llm.checkpoint import load_model

pytestmark = pytest.mark.slow


def test_kiln_export_hf_writes_a_model_transformers_loads_with_the_latest_checkpoints_logits(trained_run, kiln_cli, tmp_path):
    from transformers import LlamaForCausalLM

    out = tmp_path / "hf"
    proc = kiln_cli("export", "hf", trained_run.run_url, str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"exported {trained_run.run_url} to {out}"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    hf = LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    step, kiln_model = load_model(trained_run.run_url)
    assert step == 6
    windows = torch.from_numpy(eval_windows(trained_run.data_url, "val", 0, kiln_model.cfg.seq_len)[:4, :-1])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=windows).logits, kiln_model(windows), rtol=0, atol=1e-4)


def test_kiln_export_hf_step_exports_that_checkpoint(trained_run, kiln_cli, tmp_path):
    proc = kiln_cli("export", "hf", trained_run.run_url, str(tmp_path / "hf"), "--step", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
    _, step_3 = load_model(trained_run.run_url, 3)
    assert torch.equal(torch.from_numpy(exported["model.embed_tokens.weight"].copy()), step_3.embed.weight)
    _, step_6 = load_model(trained_run.run_url, 6)
    assert not torch.equal(step_3.embed.weight, step_6.embed.weight)


def test_kiln_export_hf_of_a_step_without_a_checkpoint_is_one_line(trained_run, kiln_cli, tmp_path):
    proc = kiln_cli("export", "hf", trained_run.run_url, str(tmp_path / "hf"), "--step", "4", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("kiln: error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    assert not (tmp_path / "hf").exists()
