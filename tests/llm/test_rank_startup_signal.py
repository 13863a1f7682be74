"""A rank that has not run a step yet has nothing to save: a stop signal ends it at once, even while it
waits in C code for the other ranks, so a rank whose launcher was killed never lingers (its parent's death
reaches it as SIGTERM)."""

import signal
import subprocess
import sys
import time

import pytest

from ops.records import RunRecords

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_ends_a_rank_still_waiting_for_the_others(ranks, token_data, tmp_path, sig):
    import torch.distributed as dist

    job = ranks.job(tmp_path / "run", token_data)
    job_path = tmp_path / "job.json"
    job.save(str(job_path))
    store = dist.TCPStore("127.0.0.1", 0, 2, is_master=True, wait_for_workers=False)
    env = ranks.env()
    env.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(store.port),
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    # Rank 1 never starts: rank 0 stays in the rendezvous.
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm.trainer", str(job_path)],
        env=env,
        cwd=ranks.repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not RunRecords(job.run_dir).heartbeats():  # the rank is running its own code, past any import
            assert proc.poll() is None, "the rank ended before it was signalled"
            time.sleep(0.2)
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        del store
