"""Per-model adapters between Kiln's models and Hugging Face's: what `kiln export hf` writes as
``config.json`` and which Hugging Face name each parameter takes.  The export asks ``adapter_for`` and
knows no model's names itself, so another model family is one new file here and one registry entry."""

from __future__ import annotations

from typing import Protocol

import torch

from llm.config import ModelConfig
from llm.hf_adapters.llama import LlamaAdapter


class HFAdapter(Protocol):
    def config(self, cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int) -> dict:
        """The Hugging Face ``config.json`` of a model of this shape."""

    def state_dict(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """The model's weights under Hugging Face names, each tensor once."""


ADAPTERS: dict[str, HFAdapter] = {"llama": LlamaAdapter()}


def adapter_for(cfg: ModelConfig) -> HFAdapter:
    return ADAPTERS[cfg.architecture]
