import pytest
import torch

from llm.config import ModelConfig
from llm.generate import next_token, sample_tokens
from llm.model import Transformer

CFG = ModelConfig(dim=32, layers=2, heads=4, kv_heads=2, seq_len=16, multiple_of=16)
PROMPT = [5, 9, 2, 31, 7]


def greedy_without_cache(model, prompt, n):
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([tokens[-CFG.seq_len :]]))[0, -1]
            tokens.append(int(torch.argmax(logits)))
    return tokens[len(prompt) :]


def test_greedy_decoding_through_the_cache_equals_full_recomputation():
    model = Transformer(CFG, 60, seed=1)
    assert sample_tokens(model, PROMPT, 10, temperature=0) == greedy_without_cache(model, PROMPT, 10)


def test_top_k_of_one_is_greedy():
    model = Transformer(CFG, 60, seed=1)
    assert sample_tokens(model, PROMPT, 8, temperature=1.0, top_k=1) == sample_tokens(model, PROMPT, 8, temperature=0)


def test_sampling_is_reproducible_per_seed():
    model = Transformer(CFG, 60, seed=1)
    with torch.no_grad():
        model.head.proj.weight.mul_(0)  # uniform next-token distribution: every draw is up to the seed
    a = sample_tokens(model, PROMPT, 12, temperature=1.0, top_k=0, seed=3)
    b = sample_tokens(model, PROMPT, 12, temperature=1.0, top_k=0, seed=3)
    c = sample_tokens(model, PROMPT, 12, temperature=1.0, top_k=0, seed=4)
    assert a == b and a != c


def test_top_k_restricts_choices_to_the_k_most_likely():
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0, 3.0])
    drawn = {next_token(logits, 1.0, 2, torch.Generator().manual_seed(s)) for s in range(50)}
    assert drawn == {1, 2}


def test_generation_runs_past_the_trained_context():
    model = Transformer(CFG, 60, seed=1)
    out = sample_tokens(model, PROMPT, 3 * CFG.seq_len, temperature=0.8, top_k=10)
    assert len(out) == 3 * CFG.seq_len


def test_stop_token_ends_generation():
    model = Transformer(CFG, 60, seed=1)
    first = sample_tokens(model, PROMPT, 1, temperature=0)[0]
    assert sample_tokens(model, PROMPT, 10, temperature=0, stop_id=first) == []


def test_empty_prompt_is_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        sample_tokens(Transformer(CFG, 60), [], 3)
