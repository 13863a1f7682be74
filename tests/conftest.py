"""Fixtures shared by every test folder: a real S3 server (moto) on 127.0.0.1."""

from __future__ import annotations

import collections
import re
import threading
from pathlib import Path

import pytest

from support.s3_endpoint import s3_endpoint


def reset_moto(endpoint: str) -> None:
    """Empty moto's store: it is one per process, shared by every server started in it, so without this
    a test would see the buckets and objects that earlier tests left."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()


@pytest.fixture
def s3_bucket(monkeypatch):
    """An empty bucket, alone in its store, on a moto S3 server on 127.0.0.1 reached through s3fs; yields
    ``s3://bucket``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)  # the server binds a free port itself
    server.start()
    _, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    reset_moto(endpoint)
    try:
        with s3_endpoint(monkeypatch, endpoint) as bucket:
            yield bucket
    finally:
        reset_moto(endpoint)
        server.stop()


@pytest.fixture
def counted_s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 whose GET response bytes are counted per (access key, object path)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    counts: collections.Counter = collections.Counter()
    moto = DomainDispatcherApplication(create_backend_app)

    def counting(environ, start_response):
        body = moto(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        credential = re.search(r"Credential=([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        key = (credential.group(1) if credential else "", environ.get("PATH_INFO", ""))

        def chunks():
            try:
                for chunk in body:
                    counts[key] += len(chunk)
                    yield chunk
            finally:
                if hasattr(body, "close"):
                    body.close()

        return chunks()

    server = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with s3_endpoint(monkeypatch, f"http://127.0.0.1:{server.server_port}") as bucket:
            yield bucket, counts
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    """Factory of tiny end-to-end configs over a small real corpus (this Python's stdlib sources).

    ``tiny_config(folder, seed=..., train={...}, ...)`` writes ``folder/config.yaml`` with the run
    in ``folder/run``, data in ``folder/data``, a two-layer model and two ranks; sections given
    as keyword arguments update the defaults.
    """
    import yaml

    from launch.corpus import write_corpus

    corpus = tmp_path_factory.mktemp("tiny-corpus")
    write_corpus(str(corpus), max_chars=400_000)

    def make(folder, seed: int = 7, **sections):
        config = {
            "run": {"name": "tiny", "dir": str(folder / "run"), "seed": seed},
            "data": {
                "inputs": [str(corpus / "train-*.jsonl.gz")],
                "val_inputs": [str(corpus / "val-*.jsonl.gz")],
                "output": str(folder / "data"),
                "vocab_size": 400,
                "shard_mb": 0.05,
            },
            "model": {"dim": 32, "layers": 2, "heads": 2, "seq_len": 32},
            "train": {"steps": 6, "micro_batch": 2, "global_batch": 4, "nproc": 2, "checkpoint_every": 3, "warmup_steps": 2},
            "cluster": {"num_cpus": 2},
        }
        for section, values in sections.items():
            config.setdefault(section, {}).update(values)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
    """``prepared_data(config_path)`` puts at the config's ``data.output`` what `kiln prepare` writes for it,
    as if prepared there: a copy of one real `kiln prepare` per seed and data section (its output aside), for
    tests whose subject is what comes after prepare.  One preparation serves every test sharing the seed."""
    import json
    import shutil
    import subprocess
    import sys

    import yaml

    from launch.config import load_config
    from launch.stages import PREPARED_WITH, prepared_with

    cache = tmp_path_factory.mktemp("prepared-data")
    done: dict[str, str] = {}

    def put(config_path) -> None:
        tree = yaml.safe_load(config_path.read_text())
        output = tree["data"].pop("output")
        key = json.dumps({"seed": tree["run"]["seed"], "data": tree["data"]}, sort_keys=True)
        if key not in done:
            folder = cache / f"seed-{tree['run']['seed']}-{len(done)}"
            folder.mkdir()
            source = folder / "config.yaml"
            source.write_text(yaml.safe_dump({**tree, "data": {**tree["data"], "output": str(folder / "data")}}))
            proc = subprocess.run(
                [sys.executable, "-m", "launch.cli", "prepare", str(source)],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[key] = str(folder / "data")
        shutil.copytree(done[key], output)
        record = prepared_with(load_config(str(config_path)))
        (Path(output) / PREPARED_WITH).write_text(json.dumps(record))

    return put
