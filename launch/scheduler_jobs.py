"""`kiln launch slurm|k8s`: a job for another scheduler (an sbatch script, a KubeRay RayJob manifest) rendered,
written to a file or printed, and submitted to SLURM.  (Ray jobs go through ``launch.ray_job_staging``.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from launch.config import ConfigError, KilnConfig
from launch.render import KubernetesOptions, SlurmOptions, render_rayjob, render_sbatch


def write_job_file(text: str, path: str, executable: bool = False) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file beside it, then a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"-o {path}: folder {os.path.dirname(path) or folder} does not exist")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kiln-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755 if executable else 0o644)
        os.replace(tmp, path)
    except BaseException:  # anything, Ctrl-C included: no temporary file left behind, then raise it on
        os.unlink(tmp)
        raise


def submit_sbatch(script: str, path: str | None) -> str:
    """Submit the script (the file at ``path`` when written, else through stdin); return the job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--submit: sbatch not found on PATH; run this on a SLURM login node or drop --submit")
    argv = ["sbatch", "--parsable"] + ([path] if path else [])
    result = subprocess.run(argv, input=None if path else script, capture_output=True, text=True)
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise ConfigError(f"--submit: sbatch refused the job: {message}")
    return result.stdout.strip().split(";")[0]


def launch_slurm(cfg: KilnConfig, options: SlurmOptions, output: str | None, submit: bool) -> None:
    script = render_sbatch(cfg, options)
    if output:
        write_job_file(script, output, executable=True)
        print(f"wrote {output}", file=sys.stderr)
    elif not submit:
        sys.stdout.write(script)
    if submit:
        print(submit_sbatch(script, output))


def launch_k8s(cfg: KilnConfig, options: KubernetesOptions, output: str | None) -> None:
    manifest = render_rayjob(cfg, options)
    if output:
        write_job_file(manifest, output)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(manifest)
