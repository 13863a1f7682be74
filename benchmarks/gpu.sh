#!/usr/bin/env bash
# Throughput of the `1b` config in bf16 on GPU: ZeRO-1 and ZeRO-3, each compiled (train.compile=true) and
# eager, then both compiled at seq_len 4096, 8192 and 32768 (32768 with activation checkpointing); on two
# GPUs or more also the 32768 sequence split over two of them and a short pipeline check.  One table at the
# end: run, tokens/s, TFLOP/s per GPU, MFU, step ms, peak GiB.
#
#   benchmarks/gpu.sh                 # from anywhere; STEPS=36 MICRO_BATCH=8 GRAD_ACCUM=2 BUDGET_S=420
#   STEPS=100 MICRO_BATCH=8 GRAD_ACCUM=16 benchmarks/gpu.sh
#   RUNS="zero1_compiled zero3_compiled" benchmarks/gpu.sh  # some of the runs only
#
# Each optimizer step takes MICRO_BATCH x GRAD_ACCUM sequences of 2048 tokens per data-parallel
# rank; the long-sequence runs keep the tokens per step (MICRO_BATCH x 2048 / seq_len sequences per
# micro-batch, at least one).  Runs go in the order below, most telling first; once BUDGET_S seconds
# have passed no further run starts, so the whole script stays under 8 minutes on one H200.
# Prints tokens/s, TFLOP/s per GPU and MFU (analytic FLOPs incl. attention over the bf16
# peak table: H100/H200 989, A100 312) of each run, as medians over the steps after
# warm-up.  Data are random tokens in real Kiln shards (throughput does not depend on
# content), so the script needs no corpus and no network.  About 5 minutes on one H200.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
STEPS="${STEPS:-36}"
MICRO_BATCH="${MICRO_BATCH:-8}"
GRAD_ACCUM="${GRAD_ACCUM:-2}"
BUDGET_S="${BUDGET_S:-420}"
PIPELINE_STEPS="${PIPELINE_STEPS:-10}"
RUNS="${RUNS:-zero1_compiled zero3_compiled zero1 zero3 zero1_seq4096 zero3_seq4096 zero1_seq8192 zero3_seq8192 zero1_seq32768 zero3_seq32768 sp2_seq32768_ac pipeline2}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/kiln-gpu-bench.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export KILN_CACHE_DIR="$WORK/cache" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$GPUS" -lt 1 ]; then
  echo "gpu.sh: no CUDA device visible" >&2
  exit 1
fi
"$PY" -c 'import torch; print("device:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "| torch", torch.__version__)'

# Random-token train split, large enough that no run repeats a sample.
"$PY" - "$WORK/data" "$STEPS" "$((MICRO_BATCH * GRAD_ACCUM))" <<'PY'
import sys
from pathlib import Path

import numpy as np

from data_shards.manifest import Manifest, ShardEntry, SourceStats, write_manifest
from data_shards.shard_format import ShardWriter, token_dtype

data, steps, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
vocab, seq_len = 32000, 2048
needed = (steps + 5) * rows * 32 * (seq_len + 1)  # enough for the longest sequence's tokens per step
dtype = token_dtype(vocab)
(data / "train").mkdir(parents=True)
rng = np.random.default_rng(0)
writer = ShardWriter(str(data / "train" / "shard-00000.arrow"), "default", dtype, 8 << 20)
written, doc = 0, 0
while written < needed:  # documents longer than the longest sequence measured
    tokens = np.append(rng.integers(4, vocab, size=32767), 2).astype(dtype)
    writer.add(tokens, doc)
    written, doc = written + len(tokens), doc + 1
w = writer.close()
entry = ShardEntry(path="shard-00000.arrow", bytes=w.bytes, sha256=w.sha256, docs=w.docs, tokens=w.tokens)
write_manifest(str(data), Manifest(
    split="train", config_hash="gpu-bench", tokenizer_sha256="0" * 64, vocab_size=vocab, bos_id=1, eos_id=2,
    pad_id=3, dtype=dtype, shards=[entry], total_docs=w.docs, total_tokens=w.tokens,
    sources={"default": SourceStats(docs=w.docs, tokens=w.tokens)},
))
print(f"data: {w.tokens / 1e6:.1f}M random tokens")
PY

# run NAME NPROC STEPS MICRO_BATCH key=value...: one torchrun of the 1b config with overrides, then its
# summary line and its row of the table.
run() {
  local name="$1" nproc="$2" steps="$3" micro="$4"
  shift 4
  local job="$WORK/$name.json"
  "$PY" - "$job" "$WORK" "$name" "$nproc" "$steps" "$micro" "$GRAD_ACCUM" "$@" <<'PY'
import sys

from launch.config import load_config
from llm.job import TrainJob

job_path, work, name, nproc, steps, micro, accum, *extra = sys.argv[1:]
overrides = [
    f"run.dir={work}/{name}", f"data.output={work}/data", f"train.steps={steps}", f"train.nproc={nproc}",
    f"train.micro_batch={micro}", "train.checkpoint_every=1000000", "train.checkpoint_at_end=false",
    "train.warmup_steps=5", "train.log_every=1", "train.precision=bf16", *extra,
]
cfg = load_config("configs/1b.yaml", overrides)
stages = cfg.train.pipeline_stages
data_parallel = int(nproc) // (stages * cfg.train.sequence_parallel)
cfg.train.global_batch = cfg.train.micro_batch * data_parallel * max(int(accum), 2 * stages)
TrainJob(run_dir=cfg.run_url, data_url=cfg.data_url, seed=cfg.run.seed, config_hash=cfg.training_hash(),
         model=cfg.model, train=cfg.train).save(job_path)
PY
  echo "== $name: 1b bf16, $nproc GPU(s), $steps steps of $micro x $GRAD_ACCUM sequences per rank, $*"
  "$PY" -m torch.distributed.run --nproc_per_node "$nproc" --master_addr 127.0.0.1 --master_port "$((29400 + RANDOM % 500))" \
    -m llm.trainer "$job" > "$WORK/$name.log" 2>&1 || { tail -40 "$WORK/$name.log"; echo "$name FAILED"; return 1; }
  "$PY" - "$WORK/$name" "$name" "$WORK/table.tsv" <<'PY'
import statistics
import sys

from ops.records import RunRecords

rows = RunRecords(sys.argv[1]).metrics()
steady = [r for r in rows if r["step"] > max(5, len(rows) // 10)] or rows
med = lambda key: statistics.median(r[key] for r in steady)
mfu = [r["mfu"] for r in steady if r["mfu"] is not None]
cells = [sys.argv[2], f"{med('tokens_per_s'):,.0f}", f"{med('tflops'):.1f}",
         f"{statistics.median(mfu) * 100 if mfu else float('nan'):.1f}%", f"{med('step_time_s') * 1e3:.0f}",
         f"{max(r['mem_gb'] for r in rows):.1f}", f"{rows[0]['loss']:.2f} -> {rows[-1]['loss']:.2f}", str(len(steady))]
print("   " + " | ".join(cells))
with open(sys.argv[3], "a") as table:
    table.write("\t".join(cells) + "\n")
PY
}

START=$SECONDS
# wanted NAME: NAME is asked for and the time budget has room for another run.
wanted() {
  [[ " $RUNS " == *" $1 "* ]] || return 1
  if (( SECONDS - START > BUDGET_S )); then
    echo "== $1: not run: the ${BUDGET_S}s budget is spent (BUDGET_S raises it)"
    return 1
  fi
}

status=0
wanted zero1_compiled && { run zero1_compiled 1 "$STEPS" "$MICRO_BATCH" train.zero_stage=1 train.compile=true || status=1; }
wanted zero3_compiled && { run zero3_compiled 1 "$STEPS" "$MICRO_BATCH" train.zero_stage=3 train.compile=true || status=1; }
wanted zero1 && { run zero1 1 "$STEPS" "$MICRO_BATCH" train.zero_stage=1 || status=1; }
wanted zero3 && { run zero3 1 "$STEPS" "$MICRO_BATCH" train.zero_stage=3 || status=1; }
for seq in 4096 8192 32768; do
  micro=$((MICRO_BATCH * 2048 / seq))
  [ "$micro" -ge 1 ] || micro=1
  recompute=$([ "$seq" -ge 32768 ] && echo true || echo false)
  for stage in 1 3; do
    wanted "zero${stage}_seq$seq" && { run "zero${stage}_seq$seq" 1 "$STEPS" "$micro" train.zero_stage=$stage \
      train.compile=true model.seq_len=$seq model.activation_checkpointing=$recompute || status=1; }
  done
done
# The 32,768-token sequence split over two GPUs (one sequence per micro-batch, activations recomputed).
long_context=(model.seq_len=32768 model.activation_checkpointing=true train.zero_stage=1)
if wanted sp2_seq32768_ac && [ "$GPUS" -ge 2 ]; then
  run sp2_seq32768_ac 2 "$STEPS" 1 "${long_context[@]}" train.sequence_parallel=2 || status=1
elif wanted sp2_seq32768_ac; then
  echo "== sp2_seq32768_ac: not run: a sequence split needs two GPUs and this machine has $GPUS (the CPU parity tests cover its correctness)"
fi
if wanted pipeline2 && [ "$GPUS" -ge 2 ]; then
  run pipeline2 2 "$PIPELINE_STEPS" "$MICRO_BATCH" train.zero_stage=1 train.pipeline_stages=2 || status=1
elif wanted pipeline2; then
  echo "== pipeline2: not run: two pipeline stages need two GPUs and this machine has $GPUS (the CPU parity tests cover pipeline correctness)"
fi
[ -s "$WORK/table.tsv" ] && "$PY" - "$WORK/table.tsv" <<'PY'
import sys

header = ["run", "tokens/s", "TFLOP/s per GPU", "MFU", "step ms", "peak GiB", "loss", "steady steps"]
rows = [header] + [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
print()
for row in rows:
    print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
PY
exit "$status"
