"""A Location is one value for a place: its URL and the storage options that reach it travel together
through every storage call, every join and every room, and the options never show when it is printed."""

import os

from hypothesis import given
from hypothesis import strategies as st

from ops import storage
from ops.records import RunRecords
from ops.storage import Location


def _options_alone(monkeypatch) -> dict:
    """The moto endpoint and credentials as storage options, with no AWS variable left to fall back on."""
    options = {
        "endpoint_url": os.environ["AWS_ENDPOINT_URL"],
        "key": os.environ["AWS_ACCESS_KEY_ID"],
        "secret": os.environ["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"region_name": "us-east-1"},
    }
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return options


def test_a_location_and_every_place_derived_from_it_reach_the_store_through_its_options_alone(s3_bucket, monkeypatch):
    run = Location(f"{s3_bucket}/runs/a", _options_alone(monkeypatch))
    storage.write_json(run.join("eval", "step-1.json"), {"loss": 1.5})
    assert storage.read_json(run.join("eval").join("step-1.json")) == {"loss": 1.5}
    assert storage.list_names(storage.join(run, "eval")) == ["step-1.json"]
    sibling = run.with_url(f"{s3_bucket}/runs/b")
    storage.write_text(sibling.join("note"), "hello")
    assert storage.exists(sibling.join("note")) and storage.read_text(sibling.join("note")) == "hello"

    records = RunRecords(run)  # the records room takes the location as it is
    records.log_metrics({"step": 1, "loss": 2.0})
    assert records.close()
    assert [row["loss"] for row in RunRecords(run).metrics()] == [2.0]


def test_join_keeps_the_kind_of_place_it_is_given():
    options = {"endpoint_url": "http://127.0.0.1:1"}
    assert storage.join("runs/a/", "eval", "/step-1.json") == "runs/a/eval/step-1.json"
    joined = storage.join(Location("s3://b/runs/a", options), "eval")
    assert joined == Location("s3://b/runs/a/eval", options) and joined.options == options
    assert storage.location("runs/a") == Location("runs/a")


@given(
    url=st.text(alphabet="abcdefghij/:._-", min_size=1, max_size=40),
    secret=st.text(alphabet="KLMNOPQRSTUVWXYZ0123456789", min_size=6, max_size=40),
    part=st.text(alphabet="abcdefghij", min_size=1, max_size=10),
)
def test_a_location_shows_its_url_and_never_its_options(url, secret, part):
    location = Location(url, {"secret": secret, "client_kwargs": {"aws_session_token": secret}})
    shown = [repr(location), str(location), f"{location}", repr(location.join(part)), str(location.with_url(part))]
    assert all(secret not in text for text in shown)
    assert str(location) == url and f"{location.join(part)}" == storage.join(url, part)
