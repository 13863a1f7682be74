import pytest
from pydantic import ValidationError

from data_shards.config import DataConfig, DedupExact, MinLength


def test_unknown_keys_are_rejected_at_every_level():
    with pytest.raises(ValidationError, match="shard_mbb"):
        DataConfig(inputs=["a.jsonl"], shard_mbb=1)
    with pytest.raises(ValidationError, match="min_char"):
        DataConfig(inputs=["a.jsonl"], filters=[{"name": "min_length", "min_char": 3}])


def test_filters_accept_bare_names_and_parameters():
    cfg = DataConfig(inputs=["a.jsonl"], filters=["dedup_exact", {"name": "min_length", "min_chars": 5}])
    assert isinstance(cfg.filters[0], DedupExact)
    assert isinstance(cfg.filters[1], MinLength) and cfg.filters[1].min_chars == 5
    with pytest.raises(ValidationError):
        DataConfig(inputs=["a.jsonl"], filters=["no_such_filter"])


def test_inputs_become_the_default_source_before_named_ones():
    cfg = DataConfig(inputs=["a.jsonl"], sources=[{"name": "code", "inputs": ["b.jsonl"], "weight": 2}])
    assert [(s.name, s.weight) for s in cfg.train_sources()] == [("default", 1.0), ("code", 2.0)]


def test_the_tokenizer_sample_grows_with_the_vocabulary_unless_given():
    assert DataConfig(vocab_size=8000).tokenizer_sample_bytes() == 8000 * 4096
    assert DataConfig(vocab_size=300).tokenizer_sample_bytes() == 8 << 20
    assert DataConfig(vocab_size=32000).tokenizer_sample_bytes() == 64 << 20
    assert DataConfig(vocab_size=32000, tokenizer_sample_mb=2).tokenizer_sample_bytes() == 2 << 20


def test_a_data_section_dumps_the_same_after_a_round_trip_through_a_saved_config():
    """prepare hashes this dump into the config hash that names shards and completion markers, so a
    prepare resumed from the saved (YAML or JSON) config must find the markers of the first one."""
    import json

    import yaml

    cfg = DataConfig(inputs=["a.jsonl"], sources=[{"name": "code", "inputs": ["b.jsonl"]}], shard_mb=4)
    for saved in (
        DataConfig.model_validate_json(cfg.model_dump_json()),
        DataConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json")))),
    ):
        assert json.dumps(saved.model_dump(), sort_keys=True) == json.dumps(cfg.model_dump(), sort_keys=True)
