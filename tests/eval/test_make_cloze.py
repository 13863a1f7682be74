"""`kiln eval make-cloze`: cloze examples from real held-out documents."""

import json

import pytest

from data_shards.errors import DataError
from data_shards.tokenizer import Tokenizer
from launch.cli import main
from cluster.evals.cloze import make_cloze, val_documents
from cluster.evals.tasks.multiple_choice import encode_pair, parse_examples


@pytest.fixture(scope="module")
def val(eval_data):
    return val_documents(eval_data), Tokenizer.load(eval_data)


def test_each_example_is_a_documents_context_its_true_continuation_and_others_of_the_same_token_count(val):
    docs, tokenizer = val
    examples = make_cloze(docs, tokenizer, n=30, context_tokens=24, continuation_tokens=6, seed=1)
    assert len(examples) == 30
    texts = [tokenizer.decode(doc[:-1]) for doc in docs]
    for example in examples:
        truth = example["choices"][example["label"]]
        assert len(example["choices"]) == 4 and len(set(example["choices"])) == 4
        assert any(example["context"] + truth in text for text in texts)  # a real document, continued as written
        sources = [[i for i, text in enumerate(texts) if choice in text] for choice in example["choices"]]
        assert all(sources)
        for choice in example["choices"]:
            assert choice.startswith(" ") and len(tokenizer.encode(choice)) == 6
            context, continuation = encode_pair(tokenizer, example["context"], choice)
            assert continuation == tokenizer.encode(choice)  # the cut is clean: no token spans it
    assert {e["label"] for e in examples} == {0, 1, 2, 3}


def test_same_seed_same_task_and_another_seed_another(val):
    docs, tokenizer = val
    one = make_cloze(docs, tokenizer, n=10, context_tokens=24, continuation_tokens=6, seed=4)
    assert make_cloze(docs, tokenizer, n=10, context_tokens=24, continuation_tokens=6, seed=4) == one
    assert make_cloze(docs, tokenizer, n=10, context_tokens=24, continuation_tokens=6, seed=5) != one


def test_too_few_documents_is_a_one_line_error(val):
    docs, tokenizer = val
    with pytest.raises(DataError, match="needs 4 val documents"):
        make_cloze(docs[:3], tokenizer, n=5)
    with pytest.raises(DataError, match=r"needs 4 val documents with 100008\+ tokens"):
        make_cloze(docs, tokenizer, n=5, context_tokens=100_000)
    with pytest.raises(DataError, match="--choices at least 2"):
        make_cloze(docs, tokenizer, n=5, choices=1)


def test_command_writes_a_task_file_that_reads_back_as_a_multiple_choice_task(eval_data, tmp_path, capsys):
    out = tmp_path / "tasks" / "cloze.jsonl"
    assert (
        main(["eval", "make-cloze", eval_data, str(out), "--n", "12", "--context-tokens", "16", "--continuation-tokens", "5"])
        == 0
    )
    assert f"wrote 12 cloze examples to {out}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and set(rows[0]) == {"context", "choices", "label"}
    assert len(parse_examples(out.read_text(), str(out))) == 12


def test_command_on_missing_data_is_one_line(tmp_path, capsys):
    assert main(["eval", "make-cloze", str(tmp_path / "nothing"), str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and err.count("\n") == 1
    assert not (tmp_path / "c.jsonl").exists()
