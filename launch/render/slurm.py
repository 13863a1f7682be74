"""SLURM batch scripts: one task per node runs `kiln train` (or, with ``--ray``, a Ray cluster runs `kiln run`)."""

from __future__ import annotations

from launch.config import ConfigError, KilnConfig
from launch.render.job_config import job_config, job_name
from launch.render.options import SlurmOptions
from launch.render.templates import render_template

# Ports that a job derives from its id lie in [PORT_BASE, PORT_BASE + PORT_SPAN): above Ray's worker
# ports (10002-19999) and below the usual ephemeral range.
PORT_BASE = 20000
PORT_SPAN = 20000
CONFIG_DELIMITER = "KILN_CONFIG_END"


def ranks_per_node(cfg: KilnConfig, options: SlurmOptions) -> str:
    """A shell expression: the GPUs SLURM gave each node, or the config's ranks per node for a CPU job."""
    if options.gpus_per_node:
        return f"${{SLURM_GPUS_ON_NODE:-{options.gpus_per_node}}}"
    return str(cfg.train.nproc)


def render_sbatch(cfg: KilnConfig, options: SlurmOptions) -> str:
    """The sbatch script that runs ``cfg`` on ``options.nodes`` nodes, requeueing itself when preempted."""
    job = job_config(cfg, options, launcher="ray" if options.ray else "local")
    config_yaml = job.to_yaml()
    if CONFIG_DELIMITER in config_yaml.split("\n"):
        raise ConfigError(f"the config holds a line {CONFIG_DELIMITER!r}, which would end the script's copy of it early")
    return render_template(
        "sbatch_ray.sh.j2" if options.ray else "sbatch_train.sh.j2",
        o=options,
        run_name=job.run.name,
        job_name=job_name(job),
        config_yaml=config_yaml,
        nproc=ranks_per_node(job, options),
        port_base=PORT_BASE,
        port_span=PORT_SPAN,
    )
