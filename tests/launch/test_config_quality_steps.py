"""Bad data.filters steps are one-line errors naming the key."""

import pytest
import yaml

from launch.config import ConfigError, load_config


def _load(tmp_path, filters):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "t"}, "data": {"inputs": ["c/*.jsonl"], "filters": filters}}))
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_unknown_step_name_lists_the_valid_ones(tmp_path):
    message = _load(tmp_path, ["strip_markup", "near_dedupe"])
    assert "data.filters.1" in message and "near_dedupe" in message and "'near_dedup'" in message


def test_bands_times_rows_must_fill_the_signature(tmp_path):
    message = _load(tmp_path, [{"name": "near_dedup", "bands": 10, "rows": 8}])
    assert "data.filters.0" in message and "bands × rows must equal signature_size: 10 × 8 = 80" in message


@pytest.mark.parametrize(
    ("step", "key"),
    [
        ({"name": "fineweb", "max_char_duplicates_ratio": -0.1}, "max_char_duplicates_ratio"),
        ({"name": "gopher_quality", "max_symbol_word_ratio": -1}, "max_symbol_word_ratio"),
        ({"name": "language", "min_score": -0.5}, "min_score"),
        ({"name": "gopher_repetition", "top_ngrams": {2: -0.2}}, "top_ngrams.2"),
    ],
)
def test_a_negative_threshold_names_its_key(tmp_path, step, key):
    message = _load(tmp_path, [step])
    assert f"data.filters.0.{key}: " in message and "greater than or equal to 0" in message
