"""Cluster job rendering: pure functions from a resolved config and typed launch options to the text of a job.

``render_sbatch`` writes a SLURM batch script, ``render_rayjob`` a KubeRay RayJob with its ConfigMap;
the jinja2 templates live beside them in ``templates/``.
"""

from launch.render.kubernetes import render_rayjob
from launch.render.options import KubernetesOptions, SlurmOptions
from launch.render.slurm import render_sbatch

__all__ = ["KubernetesOptions", "SlurmOptions", "render_rayjob", "render_sbatch"]
