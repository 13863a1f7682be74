"""The layout a config's ranks will run, decided before they start: a ConfigError naming the keys when none fits,
None when only the ranks' device can decide it."""

import pytest

from launch.config import ConfigError, KilnConfig
from launch.preflight import run_layout


def config(**train) -> KilnConfig:
    return KilnConfig.model_validate({"data": {}, "train": {"micro_batch": 1, "global_batch": 4, **train}})


def test_a_world_size_that_makes_no_layout_is_a_config_error_naming_the_keys():
    with pytest.raises(
        ConfigError, match=r"^train.nodes=1 x train.nproc=3: world size 3 is not a multiple of train.pipeline_stages=2$"
    ):
        run_layout(config(nproc=3, pipeline_stages=2, zero_stage=1))


def test_the_layout_is_decided_before_launch_when_the_precision_does_not_change_it():
    layout = run_layout(config(nproc=2, zero_stage=2))
    assert (layout.world_size, layout.data_parallel, layout.zero_stage) == (2, 2, 2)


def test_one_rank_with_automatic_precision_is_left_to_the_ranks_device():
    """fp32 on one rank runs ZeRO stage 0, bf16 the configured stage: only the device the rank finds decides."""
    assert run_layout(config(nproc=1, zero_stage=2)) is None
    assert run_layout(config(nproc=1, zero_stage=2, precision="fp32")).zero_stage == 0
