"""torchrun, reporting which ranks failed: ``python -m launch.launchers.torchrun_agent FAILURES_JSON TORCHRUN_ARGS...``.

torchrun knows each rank's exit code (a rank killed by a signal cannot say so itself) but
only prints it.  This runs torchrun's own launch and writes the failed ranks to
FAILURES_JSON for the launcher's events.  It exits 75 when every failed rank asked to be
requeued, else 1 on failure, 0 on success.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from llm.devices import die_with_parent
from llm.exit_codes import REQUEUE_EXIT_CODE


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    die_with_parent()
    # A scheduler may signal every process of a job (SLURM's step signals): the ranks act on the stop
    # signals themselves, and their default action would kill this agent and strand them.
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda *_: None)
    failures_path, torchrun_args = argv[0], argv[1:]
    try:
        run(parse_args(torchrun_args))
    except ChildFailedError as e:
        failures = [
            {"rank": rank, "host": socket.gethostname(), "exit_code": f.exitcode, "pid": f.pid}
            for rank, f in sorted(e.failures.items(), key=lambda item: item[1].timestamp)
        ]
        tmp = f"{failures_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(failures, f)
        os.replace(tmp, failures_path)
        if all(f["exit_code"] == REQUEUE_EXIT_CODE for f in failures):
            return REQUEUE_EXIT_CODE
        print(
            f"torchrun: {len(failures)} rank(s) failed: "
            + ", ".join(f"rank {f['rank']} exit code {f['exit_code']}" for f in failures),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
