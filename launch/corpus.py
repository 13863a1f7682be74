"""Build a small real corpus from this Python installation's standard-library sources.

`make smoke` uses it where the shared python-docs corpus is missing, so the smoke run
works on any machine without a network.  Same layout as python-docs: gzip JSON lines
``{"id", "text"}``, several train files and one val file.  Deterministic: files are
taken in sorted order and every twentieth one, the first included, is held out.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import sysconfig
from pathlib import Path

TRAIN_FILES = 4
VAL_EVERY = 20  # one document in twenty is held out


def stdlib_documents(max_chars: int) -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "/test" in rel or rel.startswith("test"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        docs.append((rel, text))
        total += len(text)
        if total >= max_chars:
            break
    return docs


def write_corpus(out_dir: str, max_chars: int = 8_000_000) -> dict[str, int]:
    docs = stdlib_documents(max_chars)
    if not docs:
        raise SystemExit(f"no Python sources found under {sysconfig.get_paths()['stdlib']}")
    splits: dict[str, list[dict]] = {f"train-{i:02d}": [] for i in range(TRAIN_FILES)}
    splits["val-00"] = []
    for i, (rel, text) in enumerate(docs):
        name = "val-00" if i % VAL_EVERY == 0 else f"train-{i % TRAIN_FILES:02d}"
        splits[name].append({"id": rel, "text": text})
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in splits.items():
        tmp = os.path.join(out_dir, f".{name}.jsonl.gz.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, os.path.join(out_dir, f"{name}.jsonl.gz"))
    return {name: len(rows) for name, rows in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--max-chars", type=int, default=8_000_000)
    args = parser.parse_args(argv)
    counts = write_corpus(args.out_dir, args.max_chars)
    print(f"wrote {sum(counts.values())} documents to {args.out_dir}: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
