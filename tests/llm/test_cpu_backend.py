"""What a CPU rank's DeepSpeed backend holds: torch.distributed's collectives, and no compiled op."""

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# One rank sets its backend up as the trainer does, then reports whether DeepSpeed holds a shared-memory op.
PROBE = """
import deepspeed.comm.comm as ds_comm, torch
from llm.trainer import init_distributed
init_distributed(torch.device("cpu"))
print("shm op:", ds_comm.cdb.shm_comm_op, "world:", ds_comm.get_world_size())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cpu_rank_neither_builds_nor_loads_deepspeeds_shared_memory_op(tmp_path):
    """DeepSpeed's CPU backend would JIT-compile its inference-only op in TORCH_EXTENSIONS_DIR and load it in
    every rank; the trainer's ranks skip it."""
    extensions = tmp_path / "torch-extensions"
    env = {
        **os.environ,
        "TORCH_EXTENSIONS_DIR": str(extensions),
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shm op: None world: 1" in proc.stdout, proc.stdout[-2000:]
    assert not extensions.exists(), sorted(str(p) for p in extensions.rglob("*"))
