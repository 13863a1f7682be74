"""`kiln train` on a config written from a mapping, as a user runs it: for the errors decided before any rank starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def kiln_train(config: dict, folder: Path) -> subprocess.CompletedProcess:
    """Write ``config`` to ``folder/config.yaml`` and run `kiln train` on it there."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", str(path)], cwd=folder, capture_output=True, text=True, timeout=300
    )
