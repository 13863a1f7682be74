"""Run records: what a logged row costs the training loop, and the bytes an object store receives.

Both are ratios against a baseline measured in the same run:
  * the time of ``RunRecords.log_metrics`` (buffered; a background thread writes) ÷ appending
    the same JSON line to a local file and closing it, as records were written before segments;
  * bytes PUT to a moto S3 server for N rows written as segments ÷ the bytes of rewriting the
    whole object at every row (the only way to "append" to an object), and ÷ the final size.

    .venv/bin/python benchmarks/bench_records.py [--rows 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time

from ops import storage
from ops.records import RunRecords


def row(step: int) -> dict:
    return {"time": time.time(), "step": step, "loss": 10.0 / step, "lr": 3e-4, "tokens_per_s": 12345.6, "mfu": 0.41}


def per_row_seconds(rows: int, folder: str) -> tuple[float, float]:
    records = RunRecords(os.path.join(folder, "segments"))
    started = time.perf_counter()
    for step in range(1, rows + 1):
        records.log_metrics(row(step))
    buffered = (time.perf_counter() - started) / rows
    records.close()
    path = os.path.join(folder, "single.jsonl")
    started = time.perf_counter()
    for step in range(1, rows + 1):
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row(step), sort_keys=True) + "\n")
    appended = (time.perf_counter() - started) / rows
    return buffered, appended


class PutBytes:
    def __init__(self, app):
        self.app, self.total, self.lock = app, 0, threading.Lock()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT":
            with self.lock:
                self.total += int(environ.get("CONTENT_LENGTH") or 0)
        return self.app(environ, start_response)


def object_store_bytes(rows: int) -> tuple[int, int, int]:
    """(bytes PUT as segments, bytes PUT rewriting one object per row, final size of the records)."""
    import boto3
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    counter = PutBytes(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    try:
        records = RunRecords("s3://bench/segments", flush_every_s=0.05)
        for step in range(1, rows + 1):
            records.log_metrics(row(step))
            if step % 50 == 0:
                time.sleep(0.01)  # a training loop's pace: the flusher runs in between
        records.close()
        segments = counter.total
        fs, path = storage.filesystem("s3://bench/segments")
        final = sum(info["size"] for info in fs.find(path, detail=True).values())
        counter.total, text = 0, ""
        for step in range(1, rows + 1):
            text += json.dumps(row(step), sort_keys=True) + "\n"
            storage.write_text("s3://bench/rewritten.jsonl", text)
        return segments, counter.total, final
    finally:
        server.shutdown()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--tiny", action="store_true", help="the code path only, at a size the test suite can afford")
    args = parser.parse_args()
    if args.tiny:
        args.rows = 20
    with tempfile.TemporaryDirectory(prefix="kiln-bench-records-") as folder:
        buffered, appended = per_row_seconds(args.rows, folder)
    print(
        f"log_metrics: {buffered * 1e6:.1f} µs/row; append+close: {appended * 1e6:.1f} µs/row; ratio {buffered / appended:.2f}"
    )
    segments, rewritten, final = object_store_bytes(args.rows)
    print(
        f"{args.rows} rows on S3 (moto): segments PUT {segments:,} B = {segments / final:.2f} x final size; "
        f"rewriting per row PUT {rewritten:,} B = {rewritten / final:.0f} x; "
        f"segments / rewrite = {segments / rewritten:.4f}"
    )


if __name__ == "__main__":
    main()
