import math

import pytest
import torch

from llm.config import ModelConfig
from llm.model import KVCache, Transformer, next_token_loss

VOCAB = 97


def tiny(**overrides) -> ModelConfig:
    base = dict(dim=32, layers=2, heads=4, seq_len=16, multiple_of=16)
    return ModelConfig(**{**base, **overrides})


def tokens(batch=2, length=12, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_have_batch_time_vocab_shape():
    model = Transformer(tiny(), VOCAB)
    assert model(tokens()).shape == (2, 12, VOCAB)


def test_future_tokens_do_not_change_earlier_logits():
    model = Transformer(tiny(), VOCAB)
    x = tokens()
    changed = x.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    a, b, c = Transformer(tiny(), VOCAB, seed=3), Transformer(tiny(), VOCAB, seed=3), Transformer(tiny(), VOCAB, seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(pa, pb), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name


def test_residual_projections_use_depth_scaled_init():
    cfg = ModelConfig(dim=256, layers=8, heads=4, seq_len=16, init_std=0.02)
    model = Transformer(cfg, 64)
    block = model.layers[0]
    assert block.attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.wo.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert block.ffn.w2.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_grouped_query_attention_equals_full_attention_with_shared_key_value_heads():
    gqa = Transformer(tiny(kv_heads=2), VOCAB)
    mha = Transformer(tiny(), VOCAB)
    state = gqa.state_dict()
    head_dim = 32 // 4
    for i in range(2):
        for proj in ("wk", "wv"):
            key = f"layers.{i}.attn.{proj}.weight"
            per_head = state[key].view(2, head_dim, 32)
            state[key] = per_head.repeat_interleave(2, dim=0).reshape(4 * head_dim, 32)
    mha.load_state_dict(state)
    assert gqa.layers[0].attn.wk.weight.shape == (2 * head_dim, 32)
    torch.testing.assert_close(gqa(tokens()), mha(tokens()), rtol=1e-5, atol=1e-6)


def test_tied_embeddings_share_one_tensor_and_shrink_parameter_count():
    tied = Transformer(tiny(tie_embeddings=True), VOCAB)
    untied = Transformer(tiny(), VOCAB)
    assert tied.head.proj.weight is tied.embed.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == VOCAB * 32


@pytest.mark.parametrize("overrides", [{}, {"kv_heads": 2}, {"tie_embeddings": True}, {"ffn_hidden": 50}])
def test_parameter_count_formula_matches_the_module(overrides):
    cfg = tiny(**overrides)
    model = Transformer(cfg, VOCAB)
    assert cfg.parameter_counts(VOCAB)["total"] == sum(p.numel() for p in model.parameters())


def test_kv_cache_decoding_matches_full_forward():
    model = Transformer(tiny(kv_heads=2), VOCAB).eval()
    x = tokens(length=10)
    with torch.no_grad():
        full = model(x)
        cache = KVCache(2)
        prefix = model(x[:, :4], cache=cache)
        steps = [model(x[:, t : t + 1], cache=cache) for t in range(4, 7)]
        chunk = model(x[:, 7:], cache=cache)
    incremental = torch.cat([prefix, *steps, chunk], dim=1)
    torch.testing.assert_close(incremental, full, rtol=1e-5, atol=1e-5)
    assert cache.length == 10


def test_a_few_adamw_steps_fit_one_batch():
    torch.manual_seed(0)
    model = Transformer(tiny(), VOCAB)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = tokens(length=13)
    losses = []
    for _ in range(30):
        loss = next_token_loss(model(x[:, :-1]), x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(VOCAB), rel=0.05)
    assert losses[-1] < 0.5 * losses[0]
