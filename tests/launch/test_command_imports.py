"""What the `kiln` command's own process imports before it starts ranks on one machine."""

import subprocess
import sys

# The modules `kiln train` with the local launcher runs in its own process, then the heavy packages it holds.
PROBE = """
import sys
import launch.stages, launch.launchers.torchrun
print(sorted(name for name in ("ray", "deepspeed", "pandas") if name in sys.modules))
"""


def test_kiln_train_on_one_machine_starts_its_ranks_without_importing_ray_or_deepspeed():
    """The ranks import DeepSpeed themselves; in the command, Ray (about 0.7 s) and DeepSpeed (about 0.5 s)
    would only delay their start."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
