"""Export a committed checkpoint as a Hugging Face Llama model folder.

    OUT_DIR/config.json             LlamaConfig
    OUT_DIR/model.safetensors       fp32 weights in Hugging Face names
    OUT_DIR/generation_config.json
    OUT_DIR/tokenizer.json          a fast tokenizer that encodes exactly as the run's sentencepiece
                                    model (loads with neither sentencepiece nor protobuf installed)
    OUT_DIR/tokenizer.model         the run's sentencepiece model, plus tokenizer_config.json
                                    and special_tokens_map.json

The model's adapter (``llm.hf_adapters``) gives the config and the weights' names.  The safetensors
file is written here directly (an 8-byte header length, a JSON header, then raw little-endian tensor
bytes), so exporting needs neither ``safetensors`` nor ``transformers``.
"""

from __future__ import annotations

import json
import os
import struct

import sentencepiece as spm
import torch

from llm.checkpoint import load_model_state, read_commit
from llm.hf_adapters import adapter_for
from llm.hf_tokenizer import tokenizer_json
from ops import storage

_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {tensor.dtype} is not exportable")
        if tensor.dtype == torch.bfloat16:  # numpy has no bf16: move the raw 16-bit words
            data = tensor.view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            array = tensor.numpy()
            data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in blobs:
            f.write(data)
    os.replace(tmp, path)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _write_tokenizer(out_dir: str, model_bytes: bytes, seq_len: int) -> tuple[int, int]:
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_json(model_bytes), f, ensure_ascii=False)
    special = {}
    for role, piece_id in (
        ("bos_token", sp.bos_id()),
        ("eos_token", sp.eos_id()),
        ("unk_token", sp.unk_id()),
        ("pad_token", sp.pad_id()),
    ):
        if piece_id >= 0:
            special[role] = sp.id_to_piece(piece_id)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special)
    # The generic fast class reads tokenizer.json as written; split_special_tokens keeps "</s>" in
    # text as plain characters, as sentencepiece encodes it.
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": False,
            "add_eos_token": False,
            "split_special_tokens": True,
            "clean_up_tokenization_spaces": False,
            "model_max_length": seq_len,
            **special,
        },
    )
    return sp.bos_id(), sp.eos_id()


def export_hf(run: storage.Place, out_dir: str, step: int | None = None, data_url: str | None = None) -> int:
    """Write a Hugging Face Llama folder for a committed checkpoint; returns the exported step.

    The tokenizer comes from the run's data (``data_url`` overrides where that is), reached with the
    run's storage options.
    """
    from data_shards.tokenizer import Tokenizer

    step, state = load_model_state(run, step)
    info = read_commit(run, step)
    cfg = info.model
    adapter = adapter_for(cfg)
    tokenizer = Tokenizer.load(storage.location(run).with_url(data_url or info.data.url))
    os.makedirs(out_dir, exist_ok=True)
    bos_id, eos_id = _write_tokenizer(out_dir, tokenizer.model_bytes, cfg.seq_len)
    _write_json(os.path.join(out_dir, "config.json"), adapter.config(cfg, info.vocab_size, bos_id, eos_id))
    _write_json(
        os.path.join(out_dir, "generation_config.json"),
        {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": True, "temperature": 0.8, "top_k": 50},
    )
    write_safetensors(
        os.path.join(out_dir, "model.safetensors"),
        adapter.state_dict(state, cfg),
        {"format": "pt", "kiln_step": str(step)},
    )
    return step
