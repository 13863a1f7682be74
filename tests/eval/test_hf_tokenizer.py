"""tokenizer.json from a Kiln sentencepiece model: Hugging Face's tokenizers library encodes exactly as Kiln does."""

import io
import json
import random

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as FastTokenizer

from data_shards.tokenizer import Tokenizer, train_tokenizer
from llm.hf_tokenizer import bpe_merges, tokenizer_json

TRICKY = [
    "",
    " ",
    "a  b   c    d",
    " " * 37 + "x = 1",
    "\t\tif x:\n\n        return  y\n",
    "naïve café, 中文, emoji 🎉, control \x07",
    "literal specials: <s> </s> <unk> <pad>",
    "▁ already ▁▁ escaped",
    "1234567890 + 0.5e-10",
    "trailing spaces   ",
]


def stdlib(count=200):
    import os
    from pathlib import Path

    return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path(os.__file__).parent.glob("*.py"))[:count]]


@pytest.fixture(scope="module", params=[512, 3000])
def pair(request):
    texts = stdlib()
    kiln = train_tokenizer([t[:6000] for t in texts[:40]], request.param, seed=0, num_threads=1)
    fast = FastTokenizer.from_str(json.dumps(tokenizer_json(kiln.model_bytes)))
    fast.encode_special_tokens = True  # what split_special_tokens in tokenizer_config.json asks for
    return kiln, fast, texts


def test_encodes_whole_real_files_exactly_as_kiln(pair):
    kiln, fast, texts = pair
    for text in texts:  # whole files, most never seen in training
        assert fast.encode(text, add_special_tokens=False).ids == kiln.encode(text)


def test_encodes_whitespace_runs_unknown_characters_and_literal_special_tokens_exactly_as_kiln(pair):
    kiln, fast, _ = pair
    rng = random.Random(0)
    alphabet = [" ", " ", "  ", "a", "e", "th", "\n", "\t", "1", "=", "_", "é"]
    samples = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(2000)]
    for text in samples:
        assert fast.encode(text, add_special_tokens=False).ids == kiln.encode(text), repr(text)


def test_decodes_to_the_text(pair):
    kiln, fast, _ = pair
    for text in TRICKY[2:]:
        assert fast.decode(kiln.encode(text), skip_special_tokens=False) == kiln.decode(kiln.encode(text))


def test_merges_rank_each_split_of_a_piece_by_the_pieces_score():
    pieces = [("a", 0.0), ("b", -1.0), ("ab", -2.0), ("abb", -3.0), ("bb", -4.0)]
    assert bpe_merges(pieces) == [("a", "b"), ("a", "bb"), ("ab", "b"), ("b", "b")]


def test_a_model_this_file_cannot_reproduce_is_refused():
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(stdlib(5)), model_writer=out, vocab_size=300, model_type="unigram", minloglevel=2
    )
    with pytest.raises(ValueError, match="not a BPE model.*dummy prefix"):
        tokenizer_json(Tokenizer(out.getvalue()).model_bytes)
