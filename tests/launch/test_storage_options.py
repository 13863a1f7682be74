"""`storage.options` is what reaches fsspec: with the endpoint and credentials given only there (no AWS
variables, no AWS config files), `kiln prepare` reads its inputs from S3 and writes its data there, in the
command's own process and in its Ray workers."""

import glob
import os
import subprocess
import sys

import pytest
import yaml

from data_shards.manifest import is_prepared
from ops import storage

pytestmark = pytest.mark.slow


def test_prepare_reaches_s3_through_storage_options_alone(s3_bucket, tiny_config, tmp_path):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    path = tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    for pattern in config["data"]["inputs"] + config["data"]["val_inputs"]:
        for local in sorted(glob.glob(pattern)):
            storage.write_bytes(f"{s3_bucket}/corpus/{os.path.basename(local)}", storage.read_bytes(local))
    options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}
    config["data"].update(
        inputs=[f"{s3_bucket}/corpus/train-*.jsonl.gz"],
        val_inputs=[f"{s3_bucket}/corpus/val-*.jsonl.gz"],
        output=f"{s3_bucket}/data",
    )
    config["storage"] = {"options": options}
    path.write_text(yaml.safe_dump(config))

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "prepare", str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = storage.Location(f"{s3_bucket}/data", options)
    assert is_prepared(data)
    assert any(name.endswith(".arrow") for name in storage.list_names(data.join("train")))
