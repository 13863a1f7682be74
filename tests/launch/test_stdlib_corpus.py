import gzip
import hashlib
import json

from launch.corpus import write_corpus


def read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_stdlib_corpus_has_train_and_val_files_in_the_python_docs_shape(tmp_path):
    counts = write_corpus(str(tmp_path), max_chars=300_000)
    assert counts["val-00"] > 0 and sum(v for k, v in counts.items() if k.startswith("train")) > counts["val-00"]
    rows = read(tmp_path / "train-00.jsonl.gz")
    assert rows and set(rows[0]) == {"id", "text"} and rows[0]["text"].strip()
    train_ids = {r["id"] for name in counts if name.startswith("train") for r in read(tmp_path / f"{name}.jsonl.gz")}
    val_ids = {r["id"] for r in read(tmp_path / "val-00.jsonl.gz")}
    assert not train_ids & val_ids


def test_stdlib_corpus_is_deterministic(tmp_path):
    def digest(folder):
        write_corpus(str(folder), max_chars=200_000)
        return {p.name: hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest() for p in sorted(folder.iterdir())}

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
