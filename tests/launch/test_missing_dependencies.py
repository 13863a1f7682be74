"""A Python without Kiln's dependencies (a Ray cluster started outside Kiln's environment) gets one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_python_without_kilns_dependencies_is_told_in_one_line_which_and_how_to_fix_it(tmp_path):
    # -S: no site-packages, so Kiln's code is found (from the working folder, as Ray's job working_dir is) but
    # not rich, ray or anything else it depends on.
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "launch.cli", "status", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"kiln: error: {sys.executable} cannot import 'rich', one of Kiln's dependencies")
    assert "start Ray from Kiln's environment" in proc.stderr


def test_a_python_with_kilns_other_dependencies_but_not_ray_is_told_in_one_line_even_when_the_command_fails(tmp_path):
    # The command fails first (no run at that path); telling its error apart needs cluster.submit, which needs ray.
    # sys.modules["ray"] = None makes every import of ray fail, as in a Python where it is not installed.
    program = "import sys; sys.modules['ray'] = None; from launch.cli import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", program, "status", str(tmp_path / "no-run-here")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"kiln: error: {sys.executable} cannot import 'ray', one of Kiln's dependencies")
