"""Kiln's decoder as Hugging Face's ``LlamaForCausalLM``.

The model's rotary embeddings already use Hugging Face's rotate-half layout, so the weights are
renamed, never permuted."""

from __future__ import annotations

import re

import torch

from llm.config import ModelConfig

_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "head.norm.weight": "model.norm.weight",
    "head.proj.weight": "lm_head.weight",
}


def hf_name(name: str) -> str:
    """Hugging Face Llama name of a ``Transformer`` state-dict key."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = re.match(r"^layers\.(\d+)\.(.+)$", name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}"
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


class LlamaAdapter:
    def state_dict(self, state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        out = {hf_name(k): v for k, v in state.items()}
        if cfg.tie_embeddings:
            out.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors stores a tensor once
        return out

    def config(self, cfg: ModelConfig, vocab_size: int, bos_id: int, eos_id: int) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": cfg.dim,
            "intermediate_size": cfg.hidden_dim,
            "num_hidden_layers": cfg.layers,
            "num_attention_heads": cfg.heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": cfg.seq_len,
            "initializer_range": cfg.init_std,
            "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "tie_word_embeddings": cfg.tie_embeddings,
            "bos_token_id": bos_id,
            "eos_token_id": eos_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }
