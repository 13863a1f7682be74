import gzip
import json

import numpy as np
import pytest

from data_shards.errors import DataError
from data_shards.tokenizer import Tokenizer, train_tokenizer


@pytest.fixture
def lines(tmp_path, kit):
    folder = kit.corpus_dir(tmp_path)
    out = []
    with gzip.open(folder / "train-00.jsonl.gz", "rt", encoding="utf-8") as f:
        for row in f:
            out.extend(line for line in json.loads(row)["text"].split("\n") if line.strip())
    return out[:6000]


def test_same_sample_and_seed_give_a_byte_identical_model(lines):
    a = train_tokenizer(lines, vocab_size=600, seed=3, num_threads=2)
    b = train_tokenizer(lines, vocab_size=600, seed=3, num_threads=2)
    assert a.model_bytes == b.model_bytes
    assert a.vocab_size == 600
    assert (a.unk_id, a.bos_id, a.eos_id, a.pad_id) == (0, 1, 2, 3)


def test_code_text_round_trips_including_whitespace_and_rare_characters(lines):
    tok = train_tokenizer(lines, vocab_size=600, seed=0, num_threads=2)
    text = "def f(x):\n\treturn  x + 1\n\n    # é 😀 \u00a0end"
    assert tok.decode(tok.encode(text)) == text


def test_piece_bytes_add_up_to_the_utf8_length(lines):
    tok = train_tokenizer(lines, vocab_size=600, seed=0, num_threads=2)
    sizes = tok.piece_bytes()
    assert sizes.dtype == np.int64 and sizes.shape == (600,)
    assert sizes[tok.eos_id] == 0 and sizes[tok.bos_id] == 0
    for text in ["plain words here", "tabs\tand\nnewlines  ", "bytes é 😀 ∑"]:
        assert int(sizes[tok.encode(text)].sum()) == len(text.encode("utf-8"))


def test_save_and_load_give_the_same_tokenizer(lines, tmp_path):
    tok = train_tokenizer(lines, vocab_size=600, seed=0, num_threads=2)
    tok.save(str(tmp_path / "data"))
    again = Tokenizer.load(str(tmp_path / "data"))
    assert again.model_bytes == tok.model_bytes
    assert (tmp_path / "data" / "tokenizer" / "meta.json").exists()


def test_missing_tokenizer_and_vocab_too_large_are_data_errors(lines, tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        Tokenizer.load(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="tokenizer training failed"):
        train_tokenizer(lines[:20], vocab_size=50_000, seed=0)
    with pytest.raises(DataError, match="not a sentencepiece model"):
        bad = tmp_path / "bad.model"
        bad.write_bytes(b"nonsense")
        Tokenizer.from_file(str(bad))


def documents(tmp_path, kit) -> list[str]:
    folder = kit.corpus_dir(tmp_path)
    with gzip.open(folder / "train-01.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(row)["text"] for row in f]
    return docs + [
        "",
        "\n",
        "\n\nblank lines\n\n\n",
        "no newline at all",
        "trailing\n",
        "\r\nwindows\r\nlines\r\n",
        "é\n\t\n😀",
    ]


def test_batches_encode_line_by_line_to_exactly_the_ids_of_whole_documents(lines, tmp_path, kit):
    import sentencepiece as spm

    tok = train_tokenizer(lines, vocab_size=600, seed=0, num_threads=2)
    assert tok.newline_is_a_boundary
    docs = documents(tmp_path, kit)
    whole = spm.SentencePieceProcessor(model_proto=tok.model_bytes).encode(docs)
    assert tok.encode_batch(docs) == whole


def test_a_tokenizer_whose_pieces_may_span_newlines_encodes_whole_documents(lines, tmp_path, kit):
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=400,
        model_type="unigram",
        add_dummy_prefix=True,
        minloglevel=2,
        num_threads=1,
    )
    tok = Tokenizer(out.getvalue())
    assert not tok.newline_is_a_boundary
    docs = documents(tmp_path, kit)[:20]
    assert tok.encode_batch(docs) == spm.SentencePieceProcessor(model_proto=tok.model_bytes).encode(docs)
