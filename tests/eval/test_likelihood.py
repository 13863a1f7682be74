import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm.config import ModelConfig
from cluster.evals.likelihood import window_nll
from llm.model import Transformer

CFG = ModelConfig(dim=32, layers=2, heads=4, seq_len=16, multiple_of=16)


def windows(n=5, length=9, vocab=50):
    return np.random.default_rng(0).integers(0, vocab, size=(n, length), dtype=np.int64)


def test_uniform_model_scores_log_vocab_per_token():
    model = Transformer(CFG, 50)
    with torch.no_grad():
        model.head.proj.weight.zero_()
    total, count = window_nll(model, windows())
    assert count == 5 * 8
    assert total / count == pytest.approx(math.log(50), rel=1e-6)


def test_sum_matches_direct_cross_entropy_and_is_batch_size_invariant():
    model = Transformer(CFG, 50)
    w = windows()
    with torch.no_grad():
        x = torch.from_numpy(w)
        expected = F.cross_entropy(model(x[:, :-1]).reshape(-1, 50), x[:, 1:].reshape(-1), reduction="sum").item()
    one, _ = window_nll(model, w, batch_size=1)
    three, _ = window_nll(model, w, batch_size=3)
    assert one == pytest.approx(expected, rel=1e-5)
    assert three == pytest.approx(expected, rel=1e-5)


def test_uint16_windows_score_exactly_as_their_int64_values_and_training_mode_is_restored():
    model = Transformer(CFG, 50).train()
    w = windows()
    assert window_nll(model, w.astype(np.uint16)) == window_nll(model, w)
    assert model.training


def test_rejects_windows_without_a_target():
    with pytest.raises(ValueError, match="seq_len"):
        window_nll(Transformer(CFG, 50), np.zeros((3, 1), dtype=np.int64))
