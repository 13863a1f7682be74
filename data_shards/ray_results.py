"""Collecting Ray task results so that a task's DataError reaches the user as one plain line."""

from __future__ import annotations

import ray

from data_shards.errors import DataError


def get(refs):
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, DataError):
            raise DataError(str(cause)) from None
        raise
