"""How the ranks of a training job start: one module per launcher, all driven by ``base.run_job``.

A new launcher is a module with a :class:`~launch.launchers.base.Launcher` subclass, named here
under the ``train.launcher`` value that picks it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launch.config import KilnConfig
    from launch.launchers.base import Launcher

LAUNCHERS = {
    "local": "launch.launchers.torchrun:TorchrunLauncher",
    "ray": "launch.launchers.ray_train:RayTrainLauncher",
    "none": "launch.launchers.external:ExternalLauncher",
}


def launcher_for(cfg: "KilnConfig") -> "Launcher":
    """The launcher ``train.launcher`` names, for this config's job (imported only when chosen)."""
    module, cls = LAUNCHERS[cfg.train.launcher].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg)
