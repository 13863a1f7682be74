"""Multiple choice from a JSONL task file, scored as lm-evaluation-harness scores a ``multiple_choice`` task.

Each line is ``{"context": str, "choices": [str, ...], "label": int}`` (other fields are
ignored).  Each choice's text is appended to the context exactly as stored (the harness's
``target_delimiter: ""``) and scored as the sum of the log-likelihoods of its tokens after
the context's tokens.  ``acc`` counts examples whose best-scoring choice is the label;
``acc_norm`` divides each score by the choice's length in characters first.

Tokens are split between context and choice the harness's way: whitespace at the end of
the context moves to the front of the choice, the whole text is encoded, and the choice's
tokens are those after as many tokens as the context alone encodes to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_shards.errors import DataError
from data_shards.tokenizer import Tokenizer
from cluster.evals.likelihood import continuation_logprobs
from llm.model import Transformer
from cluster.evals.tasks.base import EvalTask, Metric, ModelShape, Slice, Tally, TaskEntry, TaskInputs, TaskResult
from ops import storage


class MultipleChoiceEntry(TaskEntry):
    type: Literal["multiple_choice"]
    path: str = Field(description="JSONL task file: a local path or an fsspec URL")
    limit: int | None = Field(default=None, ge=1, description="evaluate only the first N examples")


class Example(BaseModel):
    """One line of a task file."""

    model_config = ConfigDict(extra="ignore", strict=True)
    context: str
    choices: list[str]
    label: int


def _line_error(path: str, number: int, err: ValidationError) -> DataError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    if first["type"] == "missing":
        return DataError(f"{path} line {number}: missing field '{field}' (each line needs context, choices and label)")
    return DataError(f"{path} line {number}: '{field}': {first['msg'].lower()}")


def parse_examples(text: str, path: str) -> list[tuple[int, Example]]:
    """Checked examples of a task file with their line numbers; DataError naming the file and line otherwise."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number}: expected a JSON object with context, choices and label")
        try:
            example = Example.model_validate(row)
        except ValidationError as exc:
            raise _line_error(path, number, exc) from None
        if not example.choices:
            raise DataError(f"{path} line {number}: 'choices' is empty")
        if not 0 <= example.label < len(example.choices):
            raise DataError(
                f"{path} line {number}: label {example.label} is out of range for "
                f"{len(example.choices)} choices (0 to {len(example.choices) - 1})"
            )
        empty = [i for i, choice in enumerate(example.choices) if not choice]
        if empty:
            raise DataError(f"{path} line {number}: choice {empty[0]} is an empty string")
        out.append((number, example))
    if not out:
        raise DataError(f"{path}: holds no examples")
    return out


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens, split as lm-evaluation-harness splits them for a causal model."""
    if not context:
        prefix = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
        return [prefix], tokenizer.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_tokens = tokenizer.encode(context)
    return context_tokens, whole[len(context_tokens) :]


@dataclass(frozen=True)
class EncodedExample:
    line: int
    context: list[int]
    continuations: list[list[int]]
    choice_chars: list[int]
    label: int


class MultipleChoiceTally(Tally):
    correct: int = 0
    correct_norm: int = 0


class MultipleChoiceTask(EvalTask):
    type = "multiple_choice"
    entry = MultipleChoiceEntry

    def __init__(self, name: str, path: str, examples: list[EncodedExample], batch_size: int):
        super().__init__(name)
        self.path = path
        self.examples = examples
        self.batch_size = batch_size

    @classmethod
    def build(cls, entry: MultipleChoiceEntry, inputs: TaskInputs) -> "MultipleChoiceTask":
        task_file = inputs.data.with_url(entry.path)
        if not storage.exists(task_file):
            raise DataError(f"eval task '{entry.name}': task file {entry.path} does not exist")
        parsed = parse_examples(storage.read_text(task_file), entry.path)
        if entry.limit is not None:
            parsed = parsed[: entry.limit]
        encoded = []
        for line, example in parsed:
            pairs = [encode_pair(inputs.tokenizer, example.context, choice) for choice in example.choices]
            for i, (_, continuation) in enumerate(pairs):
                if not continuation:
                    raise DataError(f"{entry.path} line {line}: choice {i} encodes to no token of its own after the context")
            encoded.append(
                EncodedExample(
                    line=line,
                    context=pairs[0][0],
                    continuations=[c for _, c in pairs],
                    choice_chars=[len(c) for c in example.choices],
                    label=example.label,
                )
            )
        return cls(entry.name, entry.path, encoded, inputs.batch_size)

    def slices(self, shape: ModelShape, slice_size: int) -> list[Slice]:
        for example in self.examples:
            for i, continuation in enumerate(example.continuations):
                if len(continuation) > shape.seq_len:
                    raise DataError(
                        f"{self.path} line {example.line}: choice {i} is {len(continuation)} tokens, "
                        f"more than the model's seq_len {shape.seq_len}"
                    )
        n = len(self.examples)
        return [
            Slice(task=self.name, source="examples", start=start, stop=min(start + slice_size, n))
            for start in range(0, n, slice_size)
        ]

    def totals(self, shape: ModelShape) -> Tally:
        tokens = sum(len(c) for example in self.examples for c in example.continuations)
        return Tally(examples=len(self.examples), tokens=tokens)

    def new_tally(self) -> MultipleChoiceTally:
        return MultipleChoiceTally()

    def batches(self, piece: Slice, model: Transformer | None) -> Iterator[list[EncodedExample]]:
        examples = self.examples[piece.start : piece.stop]
        for first in range(0, len(examples), self.batch_size):
            yield examples[first : first + self.batch_size]

    def score(self, model: Transformer | None, batch: list[EncodedExample]) -> MultipleChoiceTally:
        requests = [(example.context, continuation) for example in batch for continuation in example.continuations]
        scores = continuation_logprobs(model, requests, self.batch_size)
        tally = MultipleChoiceTally()
        first = 0
        for example in batch:
            lls = np.asarray(scores[first : first + len(example.continuations)], dtype=np.float64)
            first += len(example.continuations)
            tally.examples += 1
            tally.tokens += sum(len(c) for c in example.continuations)
            tally.correct += int(np.argmax(lls) == example.label)
            tally.correct_norm += int(np.argmax(lls / np.asarray(example.choice_chars, dtype=np.float64)) == example.label)
        return tally

    def compute(self, tally: MultipleChoiceTally) -> TaskResult:
        return TaskResult(
            name=self.name,
            type=self.type,
            metrics=[
                Metric(key="acc", label="accuracy", value=tally.correct / tally.examples),
                Metric(key="acc_norm", label="accuracy, length-normalised", value=tally.correct_norm / tally.examples),
                Metric(key="examples", label="examples", value=tally.examples, format=",d"),
                Metric(key="correct", label="correct", value=tally.correct, format=",d"),
                Metric(key="correct_norm", label="correct, length-normalised", value=tally.correct_norm, format=",d"),
                Metric(key="tokens", label="choice tokens scored", value=tally.tokens, format=",d"),
            ],
        )
