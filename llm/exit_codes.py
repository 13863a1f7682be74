"""How ranks and launchers agree on stopping: the signals (or the file) that ask a rank to save and stop, and
the exit code that says it did.  Launchers import it without importing the trainer."""

import signal

# Each asks every rank to save a checkpoint at the next step and exit with REQUEUE_EXIT_CODE.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

# The variable naming a file whose appearance asks the ranks to stop, where a launcher cannot signal them.
STOP_FILE_ENV = "KILN_STOP_FILE"

# A rank saved a checkpoint because it was asked to stop: requeue the job and it resumes there
# (EX_TEMPFAIL, what SLURM scripts and Kubernetes restart policies can act on).
REQUEUE_EXIT_CODE = 75
