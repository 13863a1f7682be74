import pytest
from pydantic import ValidationError

from llm.config import ModelConfig, TrainConfig


def test_kv_heads_defaults_to_heads_and_hidden_rounds_up():
    cfg = ModelConfig(dim=96, heads=4, multiple_of=64)
    assert cfg.n_kv_heads == 4
    assert cfg.hidden_dim == 256  # int(8*96/3)=256 already a multiple of 64
    assert ModelConfig(dim=104, heads=4, multiple_of=64).hidden_dim == 320  # int(8*104/3)=277 → 320


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"dim": 100, "heads": 3}, "model.dim=100 must be divisible by model.heads=3"),
        ({"dim": 24, "heads": 8}, "must be even"),
        ({"heads": 4, "kv_heads": 3}, "model.kv_heads=3"),
    ],
)
def test_bad_model_shapes_are_rejected_with_the_key(kwargs, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ModelConfig(**kwargs)


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(stpes=3)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_with_pipeline_are_rejected_in_one_line(stage):
    with pytest.raises(ValidationError) as info:
        TrainConfig(zero_stage=stage, pipeline_stages=2)
    message = info.value.errors()[0]["msg"]
    assert f"train.zero_stage={stage} cannot be combined with train.pipeline_stages=2" in message
    assert "\n" not in message


def test_compile_with_pipeline_is_rejected_in_one_line():
    with pytest.raises(ValidationError) as info:
        TrainConfig(compile=True, zero_stage=1, pipeline_stages=2)
    message = info.value.errors()[0]["msg"]
    assert "train.compile=true needs train.pipeline_stages=1" in message
    assert "\n" not in message


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_compile_with_every_zero_stage_is_accepted(stage):
    assert TrainConfig(compile=True, zero_stage=stage).compile


def test_zero_1_with_pipeline_is_accepted():
    assert TrainConfig(zero_stage=1, pipeline_stages=2).pipeline_stages == 2
