"""A Hugging Face ``tokenizer.json`` that encodes exactly as Kiln's sentencepiece model does.

Tools that load an export with only ``transformers`` or ``tokenizers`` installed (no
``sentencepiece``, no ``protobuf``) read this file; without it they would have to convert
``tokenizer.model``, which needs both.

How the two encoders line up, for the models ``data_shards.tokenizer.train_tokenizer`` makes
(BPE, identity normalisation, no dummy prefix, byte fallback):

- normalisation: sentencepiece only replaces each space with ``▁``; so does the normalizer here.
- user-defined symbols (``\\n``, ``\\t``) are never merged with a neighbour by sentencepiece;
  here they are added tokens, which split the text before the model sees it.
- merging: sentencepiece repeatedly merges the adjacent pair whose joined piece has the
  highest score (every piece of a BPE model has its own score).  A Hugging Face BPE model
  merges the pair of lowest rank, so every split of a piece into two pieces becomes a merge,
  ranked by the joined piece's score.  Pairs that make the same piece keep the order of their
  left part's id.
- characters outside the vocabulary become ``<0xNN>`` byte pieces in both.
- control pieces (``<s>``, ``</s>``, ``<pad>``, ``<unk>``) are special tokens that plain text
  never produces in sentencepiece; ``split_special_tokens`` in tokenizer_config.json keeps it
  so here.
"""

from __future__ import annotations

from sentencepiece import sentencepiece_model_pb2

_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece
_BPE = sentencepiece_model_pb2.TrainerSpec.BPE
SPACE = "\u2581"


def _check_supported(proto) -> None:
    norm = proto.normalizer_spec
    problems = []
    if proto.trainer_spec.model_type != _BPE:
        problems.append("it is not a BPE model")
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        problems.append(f"its normalization rule is {norm.name!r}, not 'identity'")
    if norm.add_dummy_prefix:
        problems.append("it adds a dummy prefix")
    if norm.remove_extra_whitespaces:
        problems.append("it removes extra whitespace")
    if not norm.escape_whitespaces or proto.trainer_spec.treat_whitespace_as_suffix:
        problems.append("its whitespace handling is not the default")
    if not proto.trainer_spec.byte_fallback:
        problems.append("it has no byte fallback")
    if problems:
        raise ValueError("cannot write an exact tokenizer.json for this sentencepiece model: " + "; ".join(problems))


def bpe_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """Every split of a piece into two vocabulary pieces, in the order sentencepiece would merge them.

    ``pieces`` are the mergeable (normal) pieces with their scores, in id order.
    """
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    ranked = []
    for piece, score in pieces:
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-score, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def tokenizer_json(model_bytes: bytes) -> dict:
    """The ``tokenizer.json`` document (tokenizers' serialisation format) for a sentencepiece model."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    _check_supported(proto)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = [(p.piece, p.score) for p in proto.pieces if p.type == _PIECE.NORMAL]
    added = []
    for i, p in enumerate(proto.pieces):
        if p.type in (_PIECE.CONTROL, _PIECE.UNKNOWN, _PIECE.USER_DEFINED):
            added.append(
                {
                    "id": i,
                    "content": p.piece,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": p.type != _PIECE.USER_DEFINED,
                }
            )
    unk = next((p.piece for p in proto.pieces if p.type == _PIECE.UNKNOWN), None)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": unk,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in bpe_merges(normal)],
        },
    }
