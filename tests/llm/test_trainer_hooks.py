"""The training loop's hooks and checkpointed state parts, as plain objects (no ranks)."""

import math

import pytest
from pydantic import ValidationError

from llm.config import LossGuardConfig, TrainConfig
from llm.trainer_hooks import LossGuard, LossGuardStop, TrainerHook, TrainerHooks, loss_verdict
from llm.trainer_state import StateParts


class Events:
    def __init__(self):
        self.rows = []

    def event(self, kind, **fields):
        self.rows.append({"event": kind, **fields})


def test_a_non_finite_loss_is_always_refused_and_a_spike_only_when_asked():
    plain = LossGuardConfig()
    assert loss_verdict(math.nan, [], plain) == "loss nan is not finite"
    assert loss_verdict(math.inf, [1.0], plain) == "loss inf is not finite"
    assert loss_verdict(100.0, [1.0] * 50, plain) is None
    spiky = LossGuardConfig(spike_factor=2.0, window=3)
    assert loss_verdict(2.5, [1.0, 1.0], spiky) is None  # the window is not full yet
    assert loss_verdict(2.5, [1.0, 1.0, 1.0], spiky).startswith("loss 2.5 is above 2 x 1, the mean of the last 3")
    assert loss_verdict(1.9, [1.0, 1.0, 1.0], spiky) is None


def test_skip_keeps_the_bad_loss_out_of_the_window_and_records_the_step():
    records = Events()
    guard = LossGuard(LossGuardConfig(action="skip", spike_factor=2.0, window=2), rank=0, records=records)
    assert [guard.keep_update(s, loss) for s, loss in [(1, 3.0), (2, 3.0), (3, 9.0), (4, math.nan), (5, 5.0)]] == [
        True,
        True,
        False,
        False,
        True,
    ]
    assert list(guard.kept) == [3.0, 5.0]
    assert [(e["event"], e["step"], e["action"]) for e in records.rows] == [
        ("loss_guard", 3, "skip"),
        ("loss_guard", 4, "skip"),
    ]


def test_stop_raises_one_line_naming_the_step():
    guard = LossGuard(LossGuardConfig(action="stop"), rank=1, records=Events())
    with pytest.raises(LossGuardStop) as raised:
        guard.keep_update(7, math.nan)
    assert str(raised.value) == "step 7: loss nan is not finite (train.loss_guard.action=stop)"


def test_skip_cannot_be_asked_of_a_pipelined_run():
    with pytest.raises(ValidationError, match="train.loss_guard.action=skip needs train.pipeline_stages=1"):
        TrainConfig(pipeline_stages=2, zero_stage=1, loss_guard={"action": "skip"})
    with pytest.raises(ValidationError, match="spike_facto"):
        TrainConfig(loss_guard={"spike_facto": 3.0})


class Recorder(TrainerHook):
    def __init__(self, name, log, stop_at=None, keep=True):
        self.name, self.log, self.stop_at, self.keep = name, log, stop_at, keep

    def before_step(self, step):
        self.log.append((self.name, "before", step))
        return 75 if step == self.stop_at else None

    def keep_update(self, step, loss):
        self.log.append((self.name, "keep", step))
        return self.keep


class OnlyStop(TrainerHook):
    def __init__(self, log):
        self.log = log

    def on_stop(self, step, exit_code):
        self.log.append(("only-stop", step, exit_code))


def test_hooks_run_in_order_and_each_point_calls_only_the_hooks_that_define_it():
    log = []
    hooks = TrainerHooks([Recorder("a", log, keep=False), OnlyStop(log), Recorder("b", log, stop_at=2)])
    assert hooks.before_step(1) is None
    assert hooks.keep_update(1, 0.5) is False  # one refusal skips, and every hook still saw the step
    assert hooks.before_step(2) == 75
    hooks.on_stop(2, 75)
    assert not hooks.wants("on_metrics")
    assert log == [
        ("a", "before", 1),
        ("b", "before", 1),
        ("a", "keep", 1),
        ("b", "keep", 1),
        ("a", "before", 2),
        ("b", "before", 2),
        ("only-stop", 2, 75),
    ]


class Counter:
    name = "counter"
    record_fields = ()

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_a_registered_part_is_captured_under_its_name_and_restored_from_a_record(tmp_path):
    parts = StateParts()
    counter = Counter()
    parts.register(counter)
    counter.n = 4
    assert parts.capture() == {"parts": {"counter": {"n": 4}}}
    with pytest.raises(ValueError, match="'counter' is already registered"):
        parts.register(Counter())

    class Saved:
        parts = {"counter": {"n": 9}}

    parts.restore(Saved())
    assert counter.n == 9

    class Older:  # a checkpoint from before the part existed
        parts = {}

    parts.restore(Older())
    assert counter.n == 9
