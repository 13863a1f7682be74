"""Fixtures for the training layer: a tiny real-text token dataset and a way to run ranks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from data_shards.tokenizer import train_tokenizer
from llm.config import ModelConfig, TrainConfig
from llm.job import TrainJob
from support.token_shards import stdlib_texts, write_split

REPO = Path(__file__).resolve().parents[2]
VOCAB = 512
TINY_MODEL = {"dim": 32, "layers": 2, "heads": 4, "kv_heads": 2, "seq_len": 32, "multiple_of": 16}


@pytest.fixture(scope="session")
def token_data(tmp_path_factory) -> str:
    """DATA_URL of a tiny prepared dataset (tokenizer, train and val splits) built from real text."""
    root = tmp_path_factory.mktemp("llm-data")
    texts = stdlib_texts(40)
    tokenizer = train_tokenizer(texts, VOCAB, seed=0, num_threads=1)
    tokenizer.save(str(root))
    docs = [np.append(np.asarray(tokenizer.encode(t), dtype=np.int64), tokenizer.eos_id) for t in texts]
    write_split(root, "train", docs[:34], tokenizer, "llm-tests")
    write_split(root, "val", docs[34:], tokenizer, "llm-tests")
    return str(root)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))


def rank_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def rank_errors(proc: subprocess.CompletedProcess) -> str:
    """What a failed rank run printed that explains it: every traceback of every rank, then the tail."""
    lines = proc.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("Traceback (most recent call last)")]
    blocks = ["\n".join(lines[i : i + 60]) for i in starts[:4]]
    return "\n----\n".join(blocks + [proc.stdout[-1500:], proc.stderr[-2500:]])


class Ranks:
    """Start ranks the way launchers do (handed to tests; conftest is not importable under importlib)."""

    model = TINY_MODEL
    errors = staticmethod(rank_errors)
    env = staticmethod(rank_env)
    repo = REPO

    @staticmethod
    def job(run_dir, data_url, seed=7, model=None, storage_options=None, **train) -> TrainJob:
        base = dict(
            steps=6,
            micro_batch=2,
            global_batch=8,
            lr=3e-3,
            min_lr=3e-4,
            warmup_steps=2,
            checkpoint_every=3,
            nproc=2,
            zero_stage=2,
        )
        return TrainJob(
            run_dir=str(run_dir),
            data_url=data_url,
            seed=seed,
            config_hash="test-hash",
            storage_options=storage_options or {},
            model=ModelConfig(**{**TINY_MODEL, **(model or {})}),
            train=TrainConfig(**{**base, **train}),
        )

    @staticmethod
    def torchrun(job: TrainJob, tmp_path: Path, nproc: int = 2, timeout: int = 420) -> subprocess.CompletedProcess:
        job_path = tmp_path / f"job-{uuid.uuid4().hex}.json"
        job.save(str(job_path))
        # --standalone: torchrun binds its own rendezvous port, so concurrent test runs cannot collide on one.
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "--log-dir",
            str(tmp_path / f"torchrun-{uuid.uuid4().hex}"),
            "-m",
            "llm.trainer",
            str(job_path),
        ]
        proc = subprocess.run(cmd, env=rank_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return proc

    @staticmethod
    @contextlib.contextmanager
    def spawned(
        job: TrainJob, tmp_path: Path, nproc: int = 2, env_of_rank: list[dict[str, str]] | None = None
    ) -> Iterator[list[subprocess.Popen]]:
        """Ranks as plain processes (no torchrun), so a test can signal one, read each exit code, or give
        each rank variables of its own (``env_of_rank``).

        The rendezvous store lives in this process, on a port it bound itself, as torchrun's agent
        hosts it for its ranks; every rank left running when the block ends is killed.
        """
        import torch.distributed as dist

        job_path = tmp_path / f"job-{uuid.uuid4().hex}.json"
        job.save(str(job_path))
        store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False)
        procs = []
        try:
            for rank in range(nproc):
                env = rank_env()
                env.update(
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE=str(nproc),
                    LOCAL_WORLD_SIZE=str(nproc),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(store.port),
                    TORCHELASTIC_USE_AGENT_STORE="True",
                    **(env_of_rank[rank] if env_of_rank else {}),
                )
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "llm.trainer", str(job_path)],
                        env=env,
                        cwd=REPO,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            yield procs
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            del store

    @staticmethod
    def reference_run(job: TrainJob) -> tuple[list[float], "torch.nn.Module"]:
        """The same training as plain single-process PyTorch: whole global batch, torch AdamW, torch clipping."""
        from data_shards.loader import GlobalBatchLoader
        from llm.engine import param_groups
        from llm.model import Transformer, next_token_loss
        from llm.schedule import lr_at

        cfg = job.train
        torch.manual_seed(job.seed)
        loader = GlobalBatchLoader(job.data_url, "train", job.seed, job.model.seq_len, cfg.global_batch)
        model = Transformer(job.model, loader.manifest.vocab_size, job.seed)
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
        losses = []
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            batch = torch.from_numpy(loader.next_batch().astype(np.int64))
            loss = next_token_loss(model(batch[:, :-1]), batch[:, 1:])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
        return losses, model


@pytest.fixture(scope="session")
def ranks() -> Ranks:
    return Ranks()
