"""Evaluation, one room: everything `kiln eval` (and the eval stage of `kiln run`) does.

- ``run.evaluate_run``: the one entry point ``launch.stages`` calls.
- ``config``: the ``eval`` config section.
- ``tasks/``: the task interface and one module a task type (held-out LM, multiple choice).
- ``likelihood``: the per-model math the tasks score with (summed NLL, continuation log-likelihoods).
- ``cloze``: `kiln eval make-cloze`, a multiple-choice task made from held-out documents.
- ``driver``: which checkpoints, their tasks sliced, fanned out and gathered (``--follow`` too).
- ``pool``: the Ray actors that score slices.
- ``report``: the typed report and its file ``RUN_URL/eval/step-N.json``; ``display``: its table and progress.

The room imports ``llm`` (the model, checkpoints), ``data_shards`` and ``ops``; nothing below ``cluster``
imports it.
"""
