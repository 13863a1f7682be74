"""Multiple choice from a task file: checking the file, splitting tokens as lm-evaluation-harness does, scoring."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_shards.errors import DataError
from data_shards.tokenizer import Tokenizer
from llm.config import ModelConfig
from cluster.evals.likelihood import continuation_logprobs
from llm.model import Transformer
from cluster.evals.tasks.base import ModelShape, TaskInputs
from cluster.evals.tasks.multiple_choice import MultipleChoiceEntry, MultipleChoiceTask, encode_pair, parse_examples
from ops.storage import Location

GOOD = {"context": "def add(a, b):\n    return", "choices": [" a + b", " a - b", " None"], "label": 0}


def lines(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"context": "x", "choices": ["a", "b"]}, r"tasks/t.jsonl line 2: missing field 'label'"),
        ({"choices": ["a", "b"], "label": 0}, r"tasks/t.jsonl line 2: missing field 'context'"),
        ({"context": "x", "choices": ["a", "b"], "label": 2}, r"tasks/t.jsonl line 2: label 2 is out of range for 2 choices"),
        ({"context": "x", "choices": ["a", "b"], "label": -1}, r"tasks/t.jsonl line 2: label -1 is out of range"),
        ({"context": "x", "choices": [], "label": 0}, r"tasks/t.jsonl line 2: 'choices' is empty"),
        ({"context": "x", "choices": ["a", ""], "label": 0}, r"tasks/t.jsonl line 2: choice 1 is an empty string"),
        ({"context": "x", "choices": "ab", "label": 0}, r"tasks/t.jsonl line 2: 'choices': "),
        ({"context": "x", "choices": ["a"], "label": True}, r"tasks/t.jsonl line 2: 'label': "),
        ("{not json", r"tasks/t.jsonl line 2: not valid JSON"),
        ("[1, 2]", r"tasks/t.jsonl line 2: expected a JSON object"),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line(row, message):
    with pytest.raises(DataError, match=message) as err:
        parse_examples(lines(GOOD, row), "tasks/t.jsonl")
    assert "\n" not in str(err.value)


def test_a_file_without_examples_is_an_error_and_extra_fields_are_ignored():
    with pytest.raises(DataError, match="tasks/t.jsonl: holds no examples"):
        parse_examples("\n\n", "tasks/t.jsonl")
    [(line, example)] = parse_examples(lines({**GOOD, "id": "q-17"}), "tasks/t.jsonl")
    assert line == 1 and example.label == 0


@pytest.fixture(scope="module")
def tokenizer(eval_data) -> Tokenizer:
    return Tokenizer.load(eval_data)


class KilnTokenizedLM:
    """lm-evaluation-harness's own ``_encode_pair`` over Kiln's tokenizer."""

    def __new__(cls, tokenizer):
        from lm_eval.api.model import TemplateLM

        class LM(TemplateLM):
            backend = "causal"
            eot_token_id = tokenizer.eos_id

            def tok_encode(self, string, **kwargs):
                return tokenizer.encode(string)

            generate_until = loglikelihood_rolling = _loglikelihood_tokens = None

        return LM()


@pytest.mark.parametrize(
    "context, choice",
    [
        ("def add(a, b):\n    return", " a + b"),
        ("The value is ", "forty-two"),  # a trailing space moves into the choice
        ("lines end here\n\n", "    return x"),  # so do trailing newlines
        ("x = [1, 2, 3]", "[0]"),
        ("café", " crème"),
    ],
)
def test_tokens_split_between_context_and_choice_as_the_harness_splits_them(tokenizer, context, choice):
    harness = KilnTokenizedLM(tokenizer)
    assert encode_pair(tokenizer, context, choice) == harness._encode_pair(context, choice)


def test_an_empty_context_is_the_prefix_token_alone(tokenizer):
    context, continuation = encode_pair(tokenizer, "", "hello")
    assert context == [tokenizer.bos_id] and continuation == tokenizer.encode("hello")


def tiny_model(seq_len=16, vocab=512, seed=3) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(dim=32, layers=2, heads=4, kv_heads=2, seq_len=seq_len, multiple_of=16), vocab, seed).eval()


def test_continuation_log_likelihood_is_the_sum_over_its_tokens_after_the_left_cut_window():
    model = tiny_model(seq_len=16)
    rng = np.random.default_rng(0)
    requests = [
        (rng.integers(4, 512, size=n).tolist(), rng.integers(4, 512, size=k).tolist())
        for n, k in [(3, 2), (20, 4), (1, 1), (9, 7)]
    ]
    got = continuation_logprobs(model, requests, batch_size=3)
    for (context, continuation), value in zip(requests, got):
        window = (context + continuation)[-17:]
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([window[:-1]]))[0], dim=-1)
        expected = sum(float(logprobs[len(window) - 1 - len(continuation) + i, t]) for i, t in enumerate(continuation))
        assert value == pytest.approx(expected, abs=1e-4)
    assert continuation_logprobs(model, requests, batch_size=1) == pytest.approx(got, abs=1e-5)


def build(tokenizer, tmp_path, rows, batch_size=4) -> MultipleChoiceTask:
    path = tmp_path / "task.jsonl"
    path.write_text(lines(*rows))
    entry = MultipleChoiceEntry(name="t", type="multiple_choice", path=str(path))
    return MultipleChoiceTask.build(entry, TaskInputs(data=Location(""), tokenizer=tokenizer, batch_size=batch_size))


def score_all(task, model, slice_size):
    shape = ModelShape(seq_len=model.cfg.seq_len, vocab_size=512)
    pieces = task.slices(shape, slice_size)
    total = task.new_tally()
    for piece in pieces:
        total = total + task.run(piece, model)
    return task.compute(total).values(), task.totals(shape)


def test_accuracy_is_the_argmax_of_summed_log_likelihoods_and_acc_norm_divides_by_characters(tokenizer, tmp_path):
    rows = [
        {"context": f"value_{i} = compute({i})", "choices": [" + 1", " * total_sum", " or None", " - x"], "label": i % 4}
        for i in range(9)
    ]
    task = build(tokenizer, tmp_path, rows)
    model = tiny_model(seq_len=32)
    values, totals = score_all(task, model, slice_size=4)
    correct = correct_norm = 0
    for row in rows:
        lls = []
        for choice in row["choices"]:
            context, continuation = encode_pair(tokenizer, row["context"], choice)
            with torch.no_grad():
                logprobs = F.log_softmax(model(torch.tensor([(context + continuation)[:-1]]))[0], dim=-1)
            lls.append(sum(float(logprobs[len(context) - 1 + i, t]) for i, t in enumerate(continuation)))
        correct += int(np.argmax(lls) == row["label"])
        correct_norm += int(np.argmax(np.array(lls) / [len(c) for c in row["choices"]]) == row["label"])
    assert (values["correct"], values["correct_norm"], values["examples"]) == (correct, correct_norm, 9)
    assert values["acc"] == correct / 9 and values["acc_norm"] == correct_norm / 9
    assert (values["examples"], values["tokens"]) == (totals.examples, totals.tokens)
    again, _ = score_all(build(tokenizer, tmp_path, rows, batch_size=1), model, slice_size=1)
    assert again == values


def test_a_choice_longer_than_the_models_context_names_the_line(tokenizer, tmp_path):
    task = build(tokenizer, tmp_path, [GOOD, {"context": "x", "choices": [" y" * 40, " z"], "label": 1}])
    with pytest.raises(DataError, match=r"task.jsonl line 2: choice 0 is \d+ tokens, more than the model's seq_len 16"):
        task.slices(ModelShape(seq_len=16, vocab_size=512), 8)


def test_a_missing_task_file_is_named(tokenizer, tmp_path):
    entry = MultipleChoiceEntry(name="cloze", type="multiple_choice", path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match=r"eval task 'cloze': task file .*nope.jsonl does not exist"):
        MultipleChoiceTask.build(entry, TaskInputs(data=Location(""), tokenizer=tokenizer, batch_size=2))
