"""Export a trained 2-rank checkpoint to Hugging Face Llama and load it with transformers."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as read_safetensors

from data_shards.loader import eval_windows
from data_shards.tokenizer import Tokenizer
from llm.checkpoint import load_model
from llm.export_hf import export_hf, write_safetensors
from llm.generate import generate

MODELS = {"untied": {}, "tied": {"tie_embeddings": True}}


@pytest.fixture(scope="module", params=list(MODELS))
def trained_run(request, ranks, token_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_CACHE_DIR", str(tmp / "cache"))
        job = ranks.job(tmp / "run", token_data, steps=8, checkpoint_every=8, zero_stage=2, model=MODELS[request.param])
        proc = ranks.torchrun(job, tmp)
    assert proc.returncode == 0, ranks.errors(proc)
    return job


def test_safetensors_round_trip(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.tensor([1.5, -2.0])}
    write_safetensors(str(tmp_path / "t.safetensors"), tensors)
    back = read_safetensors(str(tmp_path / "t.safetensors"))
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["b"], tensors["b"].numpy())
    header_len = int.from_bytes((tmp_path / "t.safetensors").read_bytes()[:8], "little")
    assert header_len % 8 == 0


@pytest.mark.slow
def test_transformers_llama_reproduces_kiln_logits_on_real_text(trained_run, tmp_path):
    from transformers import LlamaForCausalLM

    job = trained_run
    out = tmp_path / "hf"
    assert export_hf(job.run_dir, str(out)) == 8
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] == job.model.tie_embeddings
    assert (out / "tokenizer.model").read_bytes() == Tokenizer.load(job.data_url).model_bytes

    hf = LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    _, kiln = load_model(job.run_dir)
    windows = torch.from_numpy(eval_windows(job.data_url, "val", 0, job.model.seq_len)[:4, :-1])
    with torch.no_grad():
        expected = kiln(windows)
        got = hf(input_ids=windows).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(str(out))
    kiln_tokenizer = Tokenizer.load(job.data_url)
    text = kiln_tokenizer.decode(eval_windows(job.data_url, "val", 0, 200)[0])
    assert hf_tokenizer(text)["input_ids"] == kiln_tokenizer.encode(text)


@pytest.mark.slow
def test_generate_continues_a_prompt_from_a_checkpoint(trained_run):
    text = generate(trained_run.run_dir, "def main(", max_tokens=20, seed=1)
    again = generate(trained_run.run_dir, "def main(", max_tokens=20, seed=1)
    assert isinstance(text, str) and text == again
    greedy = generate(trained_run.run_dir, "import ", max_tokens=10, temperature=0)
    assert len(Tokenizer.load(trained_run.data_url).encode(greedy)) >= 1


@pytest.mark.parametrize("tie", [False, True])
def test_every_parameter_has_a_distinct_hugging_face_name(tie):
    from llm.config import ModelConfig
    from llm.hf_adapters import adapter_for
    from llm.model import Transformer

    cfg = ModelConfig(dim=32, layers=3, heads=4, kv_heads=2, multiple_of=16, tie_embeddings=tie)
    model = Transformer(cfg, 50)
    names = adapter_for(cfg).state_dict(model.state_dict(), cfg)
    assert len(names) == len(model.state_dict()) - (1 if tie else 0)
    assert "model.layers.2.mlp.down_proj.weight" in names
    assert ("lm_head.weight" in names) is (not tie)
