"""Held-out evaluation fanned out over Ray: one task per val shard, gathered into eval/step-N.json.

Next to the model's loss it reports a baseline on the very same target tokens: the
cross-entropy of a unigram model fitted on the train shards (add-one smoothed).
A model that has learned anything beyond token frequencies is clearly below it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray

from cluster.config import EvalConfig
from data_shards.errors import DataError
from data_shards.loader import eval_windows, shard_token_counts
from data_shards.manifest import load_manifest
from data_shards.tokenizer import Tokenizer
from llm.checkpoint import load_model_state
from llm.config import ModelConfig
from llm.evaluate import window_nll
from llm.model import Transformer
from ops import storage


def eval_url(run_url: str, step: int) -> str:
    return storage.join(run_url, f"eval/step-{step:08d}.json")


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed unigram log-probabilities (nats) from token counts."""
    smoothed = counts.astype(np.float64) + 1.0
    return np.log(smoothed / smoothed.sum())


@ray.remote(num_cpus=1)
def _count_train_shard(data_url: str, index: int, vocab_size: int, options: dict) -> np.ndarray:
    return shard_token_counts(data_url, "train", index, vocab_size, options)


@ray.remote(num_cpus=1)
def _eval_val_shard(
    state: dict,
    model_cfg: dict,
    vocab_size: int,
    data_url: str,
    index: int,
    eval_cfg: dict,
    unigram: np.ndarray,
    piece_bytes: np.ndarray,
    options: dict,
) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    cfg = ModelConfig.model_validate(model_cfg)
    ecfg = EvalConfig.model_validate(eval_cfg)
    windows = eval_windows(data_url, "val", index, cfg.seq_len, options)
    if ecfg.max_windows_per_shard is not None:
        windows = windows[: ecfg.max_windows_per_shard]
    if len(windows) == 0:
        return {"nll": 0.0, "tokens": 0, "bytes": 0, "unigram_nll": 0.0}
    model = Transformer(cfg, vocab_size)
    model.load_state_dict(state)
    model.eval()
    nll, tokens = window_nll(model, windows, batch_size=ecfg.batch_size)
    targets = windows[:, 1:]
    return {
        "nll": float(nll),
        "tokens": int(tokens),
        "bytes": int(piece_bytes[targets].sum()),
        "unigram_nll": float(-unigram[targets].sum()),
    }


def evaluate_run(
    run_url: str,
    data_url: str,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    options: dict | None = None,
) -> dict[str, Any]:
    """Evaluate a committed checkpoint on every val shard in parallel Ray tasks; write and return the result."""
    options = options or {}
    step, state = load_model_state(run_url, eval_cfg.step, options)
    train = load_manifest(data_url, "train", options)
    val = load_manifest(data_url, "val", options)
    vocab = train.vocab_size
    counts = sum(ray.get([_count_train_shard.remote(data_url, i, vocab, options) for i in range(len(train.shards))]))
    unigram = unigram_log_probs(np.asarray(counts))
    piece_bytes = Tokenizer.load(data_url, options).piece_bytes()
    state_ref = ray.put(state)
    parts = ray.get(
        [
            _eval_val_shard.remote(
                state_ref, model_cfg.model_dump(), vocab, data_url, i, eval_cfg.model_dump(), unigram, piece_bytes, options
            )
            for i in range(len(val.shards))
        ]
    )
    tokens = sum(p["tokens"] for p in parts)
    if tokens == 0:
        raise DataError(f"{data_url}: the val shards hold no complete window of seq_len+1 = {model_cfg.seq_len + 1} tokens")
    nll = sum(p["nll"] for p in parts)
    unigram_nll = sum(p["unigram_nll"] for p in parts)
    n_bytes = sum(p["bytes"] for p in parts)
    result = {
        "step": step,
        "val_shards": len(val.shards),
        "tokens": tokens,
        "bytes": n_bytes,
        "loss": nll / tokens,
        "perplexity": math.exp(nll / tokens),
        "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
        "unigram_loss": unigram_nll / tokens,
        "unigram_perplexity": math.exp(unigram_nll / tokens),
        "unigram_bits_per_byte": unigram_nll / math.log(2) / max(n_bytes, 1),
    }
    storage.write_json(eval_url(run_url, step), result, options)
    return result
