"""Evaluation tasks: every module of this package that defines an :class:`EvalTask` subclass adds a task type.

``AnyTaskEntry`` is the typed ``eval.tasks`` list (entries told apart by ``type``), and
:func:`build_task` turns one entry into its task.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field

from cluster.evals.tasks.base import EvalTask, TaskEntry, TaskInputs


def _task_types() -> dict[str, type[EvalTask]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return {cls.type: cls for cls in EvalTask.__subclasses__()}


TASK_TYPES = _task_types()
AnyTaskEntry = Annotated[Union[tuple(cls.entry for cls in TASK_TYPES.values())], Field(discriminator="type")]


def build_task(entry: TaskEntry, inputs: TaskInputs) -> EvalTask:
    return TASK_TYPES[entry.type].build(entry, inputs)
