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


def wsd(**over) -> TrainConfig:
    base = dict(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_steps=20)
    return TrainConfig(**{**base, **over})


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_holds_the_peak_then_decays_to_min_lr_at_the_last_step(shape):
    cfg = wsd(decay_shape=shape)
    assert [lr_at(s, cfg) for s in (10, 50, 79)] == [1e-3, 1e-3, 1e-3]
    decay = [lr_at(s, cfg) for s in range(79, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert lr_at(99, cfg) == pytest.approx(1e-4)
    assert lr_at(150, cfg) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "shape, halfway",
    [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd_decay_shapes_at_half_way(shape, halfway):
    cfg = wsd(decay_shape=shape)
    assert lr_at(89, cfg) == pytest.approx(1e-4 + 9e-4 * halfway)


def test_wsd_stable_phase_does_not_depend_on_the_length_of_the_run():
    short, long = wsd(steps=100), wsd(steps=300)
    assert [lr_at(s, short) for s in range(80)] == [lr_at(s, long) for s in range(80)]


def test_a_decay_branch_without_warmup_starts_just_below_the_peak():
    branch = wsd(steps=20, warmup_steps=0, decay_steps=20, decay_shape="linear")
    assert lr_at(0, branch) == pytest.approx(1e-4 + 9e-4 * 19 / 20)
    assert lr_at(19, branch) == pytest.approx(1e-4)


def test_constant_holds_the_peak_after_warmup():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="constant")
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert {lr_at(s, cfg) for s in range(9, 500)} == {1e-3}


@pytest.mark.parametrize(
    "over, key",
    [
        (dict(decay_steps=None), "train.decay_steps"),
        (dict(decay_steps=95), "train.warmup_steps=10 + train.decay_steps=95"),
        (dict(decay_shape="exp"), "decay_shape"),
        (dict(schedule="step"), "schedule"),
    ],
)
def test_bad_schedule_settings_are_rejected_naming_the_key(over, key):
    with pytest.raises(ValueError, match=key.replace("+", r"\+")):
        wsd(**over)
