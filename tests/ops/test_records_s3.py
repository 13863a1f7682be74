"""Run records on a real S3 API (moto server, s3fs): concurrent writers lose no row, bytes written stay O(rows).

Two ranks and a launcher, each its own process, write through RunRecords at the same time
while a follower reads along; a WSGI wrapper around the moto server counts every byte PUT.
"""

import collections
import subprocess
import sys
import threading
import uuid

import pytest

from ops import storage
from ops.records import MetricsFollower, RunRecords
from support.s3_endpoint import s3_endpoint

pytestmark = pytest.mark.slow

ROWS = 10_000
EVENTS_PER_WRITER = 200

WRITER = """
import sys, time
from ops.records import RunRecords
run, role = sys.argv[1], sys.argv[2]
records = RunRecords(run, flush_every_s=0.05)
if role == "rank0":
    for step in range(1, {rows} + 1):
        records.log_metrics({{"step": step, "loss": 10.0 / step, "tokens_per_s": 1000.0, "rank": 0}})
        if step % 1000 == 0:
            records.event("checkpoint", step=step, rank=0)
    records.event("finish", step={rows}, rank=0)
else:
    for i in range({events}):
        records.event("note", writer=role, i=i)
        time.sleep(0.002)
"""


class PutCounter:
    """WSGI middleware before the moto app: bytes and count of the PUT/POST requests per path."""

    def __init__(self, app):
        self.app = app
        self.bytes = collections.Counter()
        self.puts = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] in ("PUT", "POST"):
            with self.lock:
                self.bytes[environ["PATH_INFO"]] += int(environ.get("CONTENT_LENGTH") or 0)
                self.puts[environ["PATH_INFO"]] += 1
        return self.app(environ, start_response)


@pytest.fixture
def counted_s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 whose PUT traffic is counted; yields (``s3://bucket``, counter)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    counter = PutCounter(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, counter, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with s3_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_port}") as bucket:
            yield bucket, counter
    finally:
        server.shutdown()
        thread.join()


def test_concurrent_writers_lose_no_row_and_put_bytes_stay_linear(counted_s3):
    bucket, counter = counted_s3
    run = f"{bucket}/{uuid.uuid4().hex}/big"  # moto keeps every server's objects in one process-wide store
    script = WRITER.format(rows=ROWS, events=EVENTS_PER_WRITER)
    writers = [
        subprocess.Popen([sys.executable, "-c", script, run, role], stderr=subprocess.PIPE)
        for role in ("rank0", "rank1", "launcher")
    ]
    follower = MetricsFollower(run)
    followed = []
    try:
        while any(w.poll() is None for w in writers):
            followed += follower.new_rows()
    finally:
        for w in writers:
            _, err = w.communicate(timeout=600)
            assert w.returncode == 0, err.decode()[-2000:]
    followed += follower.new_rows()

    assert [r["step"] for r in followed] == list(range(1, ROWS + 1))  # read along: each row once, in order
    records = RunRecords(run)
    assert [r["step"] for r in records.metrics()] == list(range(1, ROWS + 1))
    events = collections.Counter((e.get("writer") or e["event"]) for e in records.events())
    assert events == {"rank1": EVENTS_PER_WRITER, "launcher": EVENTS_PER_WRITER, "checkpoint": 10, "finish": 1}

    fs, root = storage.filesystem(run)
    objects = fs.find(root, detail=True)
    final_size = sum(o["size"] for o in objects.values())
    segments = [p for p in objects if "/metrics/train/" in p]
    assert len(segments) > 1  # rows went out in many small objects, not one rewritten object
    record_puts = {path: n for path, n in counter.puts.items() if path.startswith(f"/{root}/")}
    assert set(record_puts) == {f"/{p}" for p in objects}
    assert max(record_puts.values()) == 1  # no object was ever rewritten
    put_bytes = sum(counter.bytes[p] for p in record_puts)
    assert put_bytes < 3 * final_size, (put_bytes, final_size)
