"""Checkpoint files on a local disk and on S3 (moto): sha256 computed on the way out, checked on the way in."""

import hashlib
import os

import pytest

from llm.checkpoint_files import fetch, verify, write_file
from ops import storage

PAYLOAD = os.urandom(3 * 2**20 + 17)


def write(step_url):
    def produce(stream):
        for start in range(0, len(PAYLOAD), 1 << 20):
            stream.write(PAYLOAD[start : start + (1 << 20)])

    return write_file(step_url, "zero_pp_rank_1_mp_rank_00_optim_states.pt", produce, rank=1)


@pytest.fixture(params=["local", "s3"])
def step_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run" / "checkpoints" / "step-00000002")
    return request.getfixturevalue("s3_bucket") + "/run/checkpoints/step-00000002"


def test_the_entry_of_a_written_file_is_its_size_and_sha256(step_url):
    entry = write(step_url)
    assert (entry.path, entry.bytes, entry.rank) == ("zero_pp_rank_1_mp_rank_00_optim_states.pt", len(PAYLOAD), 1)
    assert entry.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert storage.read_bytes(storage.join(step_url, entry.path)) == PAYLOAD
    assert verify(step_url, entry) is None


def test_a_fetched_file_is_checked_on_the_way_and_a_bad_one_is_not_kept(step_url, tmp_path):
    entry = write(step_url)
    assert fetch(step_url, entry, str(tmp_path / "good")) is None
    assert (tmp_path / "good" / entry.path).read_bytes() == PAYLOAD
    damaged = bytearray(PAYLOAD)
    damaged[1000] ^= 0xFF
    storage.write_bytes(storage.join(step_url, entry.path), bytes(damaged))
    problem = fetch(step_url, entry, str(tmp_path / "bad"))
    assert problem == f"{storage.join(step_url, entry.path)} does not match the sha256 the record lists"
    assert not (tmp_path / "bad" / entry.path).exists()
    assert verify(step_url, entry) == problem


def test_a_short_or_missing_file_is_named(step_url):
    entry = write(step_url)
    url = storage.join(step_url, entry.path)
    storage.write_bytes(url, PAYLOAD[:-1])
    assert verify(step_url, entry) == f"{url} is {len(PAYLOAD) - 1} bytes; the record lists {len(PAYLOAD)}"
    storage.remove(url)
    assert verify(step_url, entry) == f"{url} is missing"


GROWN = 64 * 2**20


def grow_after_commit(step_url):
    entry = write(step_url)
    url = storage.join(step_url, entry.path)
    storage.write_bytes(url, PAYLOAD + os.urandom(GROWN))
    return entry, url


def bytes_read_by_this_process() -> int:
    """Bytes this process has taken in through read() so far."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_a_file_grown_after_its_commit_is_refused_one_byte_past_the_recorded_size(tmp_path):
    step_url = str(tmp_path / "run" / "checkpoints" / "step-00000002")
    entry, url = grow_after_commit(step_url)
    before = bytes_read_by_this_process()
    problem = fetch(step_url, entry, str(tmp_path / "fetched"))
    read = bytes_read_by_this_process() - before
    assert problem == f"{url} is larger than the {len(PAYLOAD)} bytes the record lists"
    assert not (tmp_path / "fetched" / entry.path).exists()
    assert read < len(PAYLOAD) + GROWN // 4  # the rest of the grown file was never read
    assert verify(step_url, entry) == problem


def test_on_s3_a_grown_file_is_refused_after_downloading_one_byte_past_the_recorded_size(counted_s3, tmp_path):
    bucket, counts = counted_s3
    step_url = bucket + "/run/checkpoints/step-00000002"
    entry, url = grow_after_commit(step_url)
    counts.clear()
    problem = fetch(step_url, entry, str(tmp_path / "fetched"))
    assert problem == f"{url} is larger than the {len(PAYLOAD)} bytes the record lists"
    assert not (tmp_path / "fetched" / entry.path).exists()
    assert sum(counts.values()) == len(PAYLOAD) + 1  # bytes the server sent: the recorded size and one more
