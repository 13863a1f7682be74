"""What TensorBoard itself reads from a run's ``tensorboard/`` folder (its own event-file reader)."""

from __future__ import annotations

import os
import tempfile

from ops import storage


def tensorboard_scalars(run: storage.Place) -> dict[str, list[tuple[int, float]]]:
    """Tag → [(step, value)] as TensorBoard shows them; a folder on object storage is downloaded first."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    with tempfile.TemporaryDirectory() as local:
        fs, root = storage.filesystem(storage.join(run, "tensorboard"))
        for name in sorted(fs.ls(root, detail=False)):
            fs.get(name, os.path.join(local, name.rstrip("/").rsplit("/", 1)[-1]))
        accumulator = EventAccumulator(local, size_guidance={SCALARS: 0})
        accumulator.Reload()
        return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}
