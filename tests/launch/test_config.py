import pytest
import yaml

from launch.config import ConfigError, apply_override, load_config

MINIMAL = {"data": {"inputs": ["corpus/*.jsonl"], "output": "data/x"}, "run": {"name": "t"}}


def write_config(tmp_path, tree) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_misspelled_key_names_it_and_suggests_the_closest_valid_key(tmp_path):
    tree = {**MINIMAL, "train": {"stpes": 10}}
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, tree))
    message = str(err.value)
    assert "train.stpes" in message and "did you mean 'train.steps'" in message
    assert "\n" not in message


def test_misspelled_section_suggests_the_section(tmp_path):
    tree = {**MINIMAL, "trian": {"steps": 10}}
    with pytest.raises(ConfigError, match=r"unknown key 'trian' — did you mean 'train'"):
        load_config(write_config(tmp_path, tree))


def test_misspelled_override_is_reported_like_a_file_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'model.layrs' — did you mean 'model.layers'"):
        load_config(write_config(tmp_path, MINIMAL), ["model.layrs=2"])


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"train.steps: .*integer.*'many'"):
        load_config(write_config(tmp_path, MINIMAL), ["train.steps=many"])


def test_inconsistent_model_shape_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, MINIMAL), ["model.dim=100", "model.heads=3"])
    assert "divisible" in str(err.value) and "\n" not in str(err.value)


def test_dotted_overrides_are_parsed_as_yaml_values(tmp_path):
    cfg = load_config(
        write_config(tmp_path, MINIMAL),
        ["train.steps=50", "train.lr=3e-4", "data.inputs=[a.jsonl, b.jsonl]", "model.tie_embeddings=true"],
    )
    assert cfg.train.steps == 50
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.inputs == ["a.jsonl", "b.jsonl"]
    assert cfg.model.tie_embeddings is True


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        apply_override({}, "train.steps")


def test_missing_config_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+ is not valid YAML"):
        load_config(str(path))


def test_run_dir_defaults_to_runs_slash_name_and_is_resolved_in_saved_yaml(tmp_path):
    cfg = load_config(write_config(tmp_path, MINIMAL))
    assert cfg.run_url == "runs/t"
    assert yaml.safe_load(cfg.to_yaml())["run"]["dir"] == "runs/t"


def test_training_hash_ignores_steps_but_not_model_shape(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    base = load_config(path).training_hash()
    assert load_config(path, ["train.steps=999"]).training_hash() == base
    assert load_config(path, ["model.layers=7"]).training_hash() != base


def test_training_hash_covers_the_learning_rate_schedule_but_not_the_layout(tmp_path):
    path = write_config(tmp_path, MINIMAL)
    base = load_config(path).training_hash()
    for changed in ("train.lr=1e-2", "train.warmup_steps=3", "train.schedule=constant", "train.min_lr=0"):
        assert load_config(path, [changed]).training_hash() != base, changed
    for same in ("train.zero_stage=1", "train.nproc=1", "model.activation_checkpointing=true", "train.init_from=runs/a"):
        assert load_config(path, [same]).training_hash() == base, same


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML"
    for path in configs:
        load_config(str(path))
