"""The decoder as a DeepSpeed ``PipelineModule``: the same Embedding, Block and Head modules as
``llm/model.py``, laid out as a flat list of layers that DeepSpeed cuts into stages.

Layer ``i`` of the list is part ``i`` of the model (0 the embedding, 1..L the blocks,
L+1 the head), so its weights come from the same seeded generator as in
``Transformer`` and pipeline checkpoints map back to ``Transformer`` names.
"""

from __future__ import annotations

import torch
from deepspeed.pipe import LayerSpec, PipelineModule

from llm.config import ModelConfig
from llm.model import Block, Embedding, Head, next_token_loss, rope_tables
from llm.parallelize import recompute


class PipelineBlock(Block):
    """A Block whose only input is the hidden state: it builds its own rotary tables."""

    def __init__(self, cfg: ModelConfig, layer_id: int, seed: int = 0):
        super().__init__(cfg, layer_id, seed)
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        cos, sin = rope_tables(self.head_dim, 0, x.shape[1], self.rope_theta, x.device)
        return super().forward(x, cos, sin)


def build_pipeline(cfg: ModelConfig, vocab_size: int, seed: int, num_stages: int) -> PipelineModule:
    if cfg.tie_embeddings:
        raise ValueError("model.tie_embeddings=true is not supported with train.pipeline_stages > 1; set it to false")
    if cfg.layers < num_stages:
        raise ValueError(f"model.layers={cfg.layers} is fewer than train.pipeline_stages={num_stages}")
    specs = [LayerSpec(Embedding, cfg, vocab_size, seed)]
    specs += [LayerSpec(PipelineBlock, cfg, i, seed) for i in range(cfg.layers)]
    specs += [LayerSpec(Head, cfg, vocab_size, seed)]
    return PipelineModule(
        layers=specs,
        num_stages=num_stages,
        loss_fn=next_token_loss,
        partition_method="type:PipelineBlock",
        activation_checkpoint_interval=1 if cfg.activation_checkpointing else 0,
        activation_checkpoint_func=recompute,
        checkpointable_layers=["PipelineBlock"],
    )


def transformer_name(layer_index: int, name: str, layers: int) -> str:
    """The ``Transformer`` state-dict key of parameter ``name`` of pipeline layer ``layer_index``."""
    if layer_index == 0:
        return f"embed.{name}"
    if layer_index <= layers:
        return f"layers.{layer_index - 1}.{name}"
    return f"head.{name}"
