import math

import pytest

from llm.config import TrainConfig
from llm.schedule import lr_at

CFG = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)


def test_warmup_rises_linearly_to_the_peak():
    assert lr_at(0, CFG) == pytest.approx(1e-4)
    assert lr_at(4, CFG) == pytest.approx(5e-4)
    assert lr_at(9, CFG) == pytest.approx(1e-3)


def test_cosine_decays_from_peak_to_min_lr_at_the_last_step():
    assert lr_at(10, CFG) == pytest.approx(1e-3)
    assert lr_at(55, CFG) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, CFG) == pytest.approx(1e-4)
    assert lr_at(500, CFG) == pytest.approx(1e-4)
    decay = [lr_at(s, CFG) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup_starts_at_peak():
    assert lr_at(0, TrainConfig(steps=10, lr=1e-3, min_lr=0.0, warmup_steps=0)) == pytest.approx(1e-3)
