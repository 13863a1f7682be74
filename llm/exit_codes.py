"""Exit codes that rank processes and launchers share."""

# A rank saved a checkpoint because it was asked to stop: requeue the job and it resumes there
# (EX_TEMPFAIL, what SLURM scripts and Kubernetes restart policies can act on).
REQUEUE_EXIT_CODE = 75
