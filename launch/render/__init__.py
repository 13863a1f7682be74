"""Cluster job rendering: pure functions from a resolved config and typed launch options to the text of a job.

``render_sbatch`` writes a SLURM batch script from the jinja2 templates in ``templates/`` (every value in it
is a validated name or number, or sits in a quoted heredoc); ``render_rayjob`` builds a KubeRay RayJob with
its ConfigMap as data and writes it with a YAML serializer.
"""

from launch.render.kubernetes import render_rayjob
from launch.render.options import KubernetesOptions, SlurmOptions
from launch.render.slurm import render_sbatch

__all__ = ["KubernetesOptions", "SlurmOptions", "render_rayjob", "render_sbatch"]
