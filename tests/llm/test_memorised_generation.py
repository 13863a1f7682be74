"""Generation reads what training wrote: a run that memorised one document writes it back under greedy
decoding, and the same prompt and seed give other text from an earlier checkpoint of the same run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_shards.tokenizer import Tokenizer
from llm.generate import generate
from support.token_shards import write_split

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = "def add_one(number):\n    return number + 1\n"
PROMPT = "def add_one("
COPIES = 300
STEPS = 60


@pytest.fixture(scope="module")
def memorised_run(ranks, token_data, tmp_path_factory):
    """2 DeepSpeed ranks trained on one document over and over: a checkpoint after step 1, and after STEPS."""
    tmp = tmp_path_factory.mktemp("memorised")
    tokenizer = Tokenizer.load(token_data)
    tokens = tokenizer.encode(DOCUMENT)
    prompt = tokenizer.encode(PROMPT)
    assert tokens[: len(prompt)] == prompt, "the prompt must tokenize as the document's first tokens"
    data = tmp / "data"
    tokenizer.save(str(data))
    copies = [tokens + [tokenizer.eos_id]] * COPIES  # one document over and over
    write_split(data, "train", copies, tokenizer, "memorised")
    write_split(data, "val", copies, tokenizer, "memorised")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KILN_CACHE_DIR", str(tmp / "cache"))
        for steps in (1, STEPS):  # the second run resumes from the first one's checkpoint
            job = ranks.job(
                tmp / "run",
                str(data),
                steps=steps,
                checkpoint_every=STEPS,
                keep_checkpoints=2,
                lr=1e-2,
                min_lr=1e-3,
                warmup_steps=5,
            )
            proc = ranks.torchrun(job, tmp)
            assert proc.returncode == 0, ranks.errors(proc)
    return tmp / "run"


def test_a_greedy_continuation_of_the_memorised_document_reproduces_it(memorised_run):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.cli",
            "generate",
            str(memorised_run),
            PROMPT,
            "--temperature",
            "0",
            "--max-tokens",
            "60",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == DOCUMENT + "\n"  # generation stops at the end-of-sequence token that followed it


def test_the_same_prompt_and_seed_give_other_text_from_another_checkpoint(memorised_run):
    run = str(memorised_run)
    late = generate(run, PROMPT, max_tokens=20, seed=3, step=STEPS)
    early = generate(run, PROMPT, max_tokens=20, seed=3, step=1)
    assert late == generate(run, PROMPT, max_tokens=20, seed=3, step=STEPS)  # the seed alone fixes a draw
    assert early != late
