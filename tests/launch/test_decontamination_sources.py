"""`decontaminate` with no files of its own cleans the training data against the evaluation's task files and
the held-out inputs; files it names are left as they are."""

import yaml

from data_shards.config import Decontaminate
from data_shards.filters import FilterChain
from launch.config import load_config
from launch.decontamination import evaluation_sources, with_evaluation_sources

PASSAGE = "the quick brown fox jumps over the lazy dog while the careful cat watches from the old stone wall"


def _config(tmp_path, step: dict):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "val-0.jsonl").write_text('{"text": "held out: ' + PASSAGE + '"}\n')
    (tmp_path / "val" / "val-1.jsonl").write_text('{"text": "another held-out document"}\n')
    (tmp_path / "cloze.jsonl").write_text('{"context": "a context", "choices": ["a", "b"], "label": 0}\n')
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "t"},
                "data": {
                    "inputs": [str(tmp_path / "train-*.jsonl")],
                    "val_inputs": [str(tmp_path / "val" / "val-*.jsonl")],
                    "filters": ["strip_markup", step],
                },
                "eval": {"tasks": [{"name": "cloze", "type": "multiple_choice", "path": str(tmp_path / "cloze.jsonl")}]},
            }
        )
    )
    return load_config(str(path))


def test_an_empty_against_list_takes_the_eval_task_files_and_every_held_out_file(tmp_path):
    cfg = _config(tmp_path, {"name": "decontaminate"})
    expected = [str(tmp_path / "cloze.jsonl"), str(tmp_path / "val" / "val-0.jsonl"), str(tmp_path / "val" / "val-1.jsonl")]
    assert evaluation_sources(cfg) == expected
    data = with_evaluation_sources(cfg)
    step = data.filters[1]
    assert isinstance(step, Decontaminate) and step.against == expected
    assert cfg.data.filters[1].against == []  # the config itself is left as the user wrote it
    chain = FilterChain(data.filters)
    assert chain(f"A forum post quoting it: {PASSAGE}.") is None
    assert chain("an unrelated training document about something else entirely") is not None
    assert chain.counts["decontaminate"]["dropped:val-0.jsonl"] == 1


def test_files_the_step_names_are_the_only_ones_it_uses(tmp_path):
    cfg = _config(tmp_path, {"name": "decontaminate", "against": [str(tmp_path / "cloze.jsonl")]})
    assert with_evaluation_sources(cfg) == cfg.data


def test_examples_stream_past_a_line_too_long_or_too_deep_and_keep_the_rest(tmp_path):
    from data_shards.quality.decontaminate import examples

    path = tmp_path / "val.jsonl"
    with open(path, "w") as f:
        f.write('{"text": "' + "x" * 5000 + '"}\n')
        f.write("[" * 1100 + "]" * 1100 + "\n")
        f.write('{"text": "' + PASSAGE + '"}\n')
    assert list(examples(str(path), max_bytes=1000)) == [PASSAGE, PASSAGE]
