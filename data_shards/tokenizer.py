"""The sentencepiece tokenizer of a prepared dataset: loading, training, byte lengths of pieces."""

from __future__ import annotations

import hashlib
import io
import json
from itertools import chain
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from data_shards.errors import DataError
from ops import storage

MODEL_PATH = "tokenizer/tokenizer.model"
META_PATH = "tokenizer/meta.json"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
# Whitespace that source code needs verbatim; sentencepiece would otherwise map it to byte pieces.
USER_SYMBOLS = ("\n", "\t")


class Tokenizer:
    """A sentencepiece model plus the ids Kiln relies on."""

    def __init__(self, model_bytes: bytes):
        self.model_bytes = bytes(model_bytes)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        self.vocab_size = int(self._sp.get_piece_size())
        self.bos_id = int(self._sp.bos_id())
        self.eos_id = int(self._sp.eos_id())
        self.pad_id = int(self._sp.pad_id())
        self.unk_id = int(self._sp.unk_id())
        if self.eos_id < 0:
            raise DataError("tokenizer.model has no end-of-sequence piece (train it with eos_id >= 0)")
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        self.newline_is_a_boundary = _newline_is_a_boundary(self.model_bytes)

    @classmethod
    def load(cls, data: storage.Place) -> "Tokenizer":
        url = storage.join(data, MODEL_PATH)
        if not storage.exists(url):
            raise DataError(f"no tokenizer at {url}: run `kiln prepare` first")
        return cls(storage.read_bytes(url))

    @classmethod
    def from_file(cls, url: storage.Place) -> "Tokenizer":
        """A user-supplied tokenizer.model (any URL)."""
        if not storage.exists(url):
            raise DataError(f"data.tokenizer: {url} does not exist")
        try:
            return cls(storage.read_bytes(url))
        except RuntimeError as exc:
            raise DataError(f"data.tokenizer: {url} is not a sentencepiece model ({exc})") from None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text, exactly as :meth:`encode` gives them.

        When no piece can span a newline (:func:`_newline_is_a_boundary`, true of every tokenizer
        Kiln trains) the texts go to sentencepiece line by line, which it encodes faster than
        whole documents, and the lines' ids are joined back per text.
        """
        if not self.newline_is_a_boundary:
            return self._sp.encode(list(texts), num_threads=num_threads)
        lines: list[str] = []
        counts: list[int] = []
        for text in texts:
            parts = text.split("\n")
            last = parts.pop()
            parts = [part + "\n" for part in parts]
            if last:
                parts.append(last)
            lines.extend(parts)
            counts.append(len(parts))
        encoded = self._sp.encode(lines, num_threads=num_threads)
        out, at = [], 0
        for count in counts:
            out.append(list(chain.from_iterable(encoded[at : at + count])))
            at += count
        return out

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def piece_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token stands for (for bits per byte).

        A byte-fallback piece ``<0xNN>`` is one byte, '▁' is one space, control and
        unknown pieces are zero.
        """
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if self._sp.is_control(i) or self._sp.is_unknown(i):
                continue
            if self._sp.is_byte(i):
                out[i] = 1
                continue
            out[i] = len(self._sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def meta(self) -> dict:
        return {
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
        }

    def save(self, data: storage.Place, extra: dict | None = None) -> None:
        """Write tokenizer.model, then meta.json (with ``extra`` fields such as training settings)."""
        storage.write_bytes(storage.join(data, MODEL_PATH), self.model_bytes)
        meta = {**self.meta(), **(extra or {})}
        storage.write_text(storage.join(data, META_PATH), json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _newline_is_a_boundary(model_bytes: bytes) -> bool:
    """True when no piece of the model can span a newline, so text split after each newline encodes
    to the same ids: a BPE model (merges never touch a user-defined piece) with "\\n" user-defined,
    identity normalisation and no dummy prefix or whitespace clean-up added to each piece of text."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # the model's description needs protobuf; without it, encode whole texts
        return False
    model = pb.ModelProto()
    model.ParseFromString(model_bytes)
    norm = model.normalizer_spec
    return (
        model.trainer_spec.model_type == pb.TrainerSpec.BPE
        and any(p.piece == "\n" and p.type == pb.ModelProto.SentencePiece.USER_DEFINED for p in model.pieces)
        and norm.name == "identity"
        and not norm.add_dummy_prefix
        and not norm.remove_extra_whitespaces
        and not norm.precompiled_charsmap
    )


def train_tokenizer(sentences: Iterable[str], vocab_size: int, seed: int, num_threads: int = 4) -> Tokenizer:
    """Train a BPE model with byte fallback; the same sentences, seed and threads give the same bytes."""
    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=out,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=0.9995,
            num_threads=num_threads,
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            user_defined_symbols=list(USER_SYMBOLS),
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise DataError(f"tokenizer training failed: {str(exc).splitlines()[-1]}") from None
    return Tokenizer(out.getvalue())
