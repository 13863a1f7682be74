"""Two ranks driving the checkpoint saver directly (started through torchrun by test_checkpoint_save.py).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 tests/llm/saver_ranks.py RUN_DIR OUT_JSON``.
Rank 0 writes what it saw to OUT_JSON.
"""

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from llm import checkpoint, checkpoint_files
from llm.checkpoint_files import CheckpointError
from llm.checkpoint_record import CheckpointRecord, DataPosition, RngState
from llm.checkpoint_save import CheckpointSaver
from llm.config import ModelConfig, TrainConfig
from llm.engine import build_engine
from llm.layout import ParallelLayout
from llm.trainer import init_distributed

VOCAB = 64


def record(step: int, layout: ParallelLayout, model: ModelConfig) -> CheckpointRecord:
    return CheckpointRecord(
        step=step,
        tokens=step,
        time=0.0,
        layout=layout,
        precision="fp32",
        model=model,
        vocab_size=VOCAB,
        config_hash="saver-test",
        data=DataPosition(url="none", fingerprint="none", consumed_samples=step, loader={}),
        rng=[RngState.capture()],
        rng_of_rank=[0, 0],
    )


def main(run_dir: str, out: str) -> None:
    device = torch.device("cpu")
    init_distributed(device)
    rank = dist.get_rank()
    model = ModelConfig(dim=32, layers=2, heads=4, seq_len=16, multiple_of=16)
    train = TrainConfig(micro_batch=2, global_batch=4, zero_stage=2, lr=1e-2, warmup_steps=0)
    layout = ParallelLayout.for_run(train, dist.get_world_size(), "fp32")
    engine = build_engine(model, train, layout, VOCAB, seed=0, device=device)
    committed: list[int] = []
    saver = CheckpointSaver(engine.engine, run_dir, keep=10, on_commit=lambda r, _: committed.append(r.step))
    engine.before_optimizer_step = saver.hold_until_copied
    batches = np.random.default_rng(rank).integers(0, VOCAB, size=(8, 2, model.seq_len + 1), dtype=np.uint16)
    seen: dict = {}

    # A save, then training goes on at once: the committed weights are the ones at save time.
    engine.train_step(batches[0])
    at_save = {name: p.detach().clone() for name, p in engine.engine.module.named_parameters()}
    saver.save(record(1, layout, model))
    engine.train_step(batches[1])
    engine.train_step(batches[2])
    saver.wait()
    if rank == 0:
        _, state = checkpoint.load_model_state(run_dir, 1)
        seen["weights_at_save_time"] = all(torch.equal(state[n], t) for n, t in at_save.items())
        seen["weights_changed_since"] = any(not torch.equal(p, at_save[n]) for n, p in engine.engine.module.named_parameters())

    # Rank 1's disk fails during the next save: nothing is committed and every rank hears why.
    real_write = checkpoint_files.write_file
    if rank == 1:

        def full_disk(*args, **kwargs):
            raise OSError("No space left on device")

        checkpoint_files.write_file = full_disk
    saver.save(record(2, layout, model))
    try:
        saver.wait()
    except CheckpointError as error:
        seen[f"error_on_rank_{rank}"] = str(error)
    checkpoint_files.write_file = real_write
    dist.barrier()
    if rank == 0:
        seen["latest_after_failure"] = checkpoint.latest_committed_step(run_dir)
        seen["step_2_committed"] = 2 in checkpoint.committed_steps(run_dir)

    # Saves back to back: the second waits for the first; both commit, in order.
    saver.save(record(3, layout, model))
    saver.save(record(4, layout, model))
    saver.wait()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        result = {k: v for part in gathered for k, v in part.items()}
        result.update(
            committed=committed,
            latest=checkpoint.latest_committed_step(run_dir),
            files_of_4=[e.path for e in checkpoint.read_commit(run_dir, 4).files],
        )
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
