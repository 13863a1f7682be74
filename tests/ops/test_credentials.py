"""Credentials in storage options: split out of what is written, merged back from the environment."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.credentials import (
    REDACTED,
    SECRETS_ENV,
    MissingCredential,
    credential_keys,
    credentials_environment,
    merge_credentials,
    restore_credentials,
    split_credentials,
)

OPTIONS = {
    "key": "AKIA-1",
    "endpoint_url": "http://127.0.0.1:9000",
    "anon": False,
    "client_kwargs": {"region_name": "us-east-1", "aws_secret_access_key": "s3cr3t", "aws_session_token": "tok"},
    "config_kwargs": {"proxies": {"https": "https://user:pw@proxy:3128"}},
    "Password": 1234,
}


def test_every_credential_at_any_depth_is_redacted_and_nothing_else():
    redacted, found = split_credentials(OPTIONS)
    assert redacted == {
        "key": REDACTED,
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"region_name": "us-east-1", "aws_secret_access_key": REDACTED, "aws_session_token": REDACTED},
        "config_kwargs": {"proxies": {"https": REDACTED}},
        "Password": REDACTED,
    }
    assert found == {
        "key": "AKIA-1",
        "client_kwargs": {"aws_secret_access_key": "s3cr3t", "aws_session_token": "tok"},
        "config_kwargs": {"proxies": {"https": "https://user:pw@proxy:3128"}},
        "Password": 1234,
    }
    assert "s3cr3t" not in json.dumps(redacted) and "pw@" not in json.dumps(redacted)
    assert merge_credentials(redacted, found) == OPTIONS
    assert credential_keys(OPTIONS) == [
        "storage.options.key",
        "storage.options.client_kwargs.aws_secret_access_key",
        "storage.options.client_kwargs.aws_session_token",
        "storage.options.config_kwargs.proxies.https",
        "storage.options.Password",
    ]


def test_the_environment_gives_the_credentials_back():
    redacted, _ = split_credentials(OPTIONS)
    assert restore_credentials(redacted, credentials_environment(OPTIONS)) == OPTIONS
    assert credentials_environment({"anon": True}) == {}


def test_a_redacted_credential_missing_from_the_environment_is_one_line_naming_the_key():
    redacted, _ = split_credentials(OPTIONS)
    partial = {SECRETS_ENV: json.dumps({"key": "AKIA-1", "Password": 1})}
    with pytest.raises(MissingCredential) as e:
        restore_credentials(redacted, partial)
    message = str(e.value)
    assert "storage.options.client_kwargs.aws_secret_access_key is redacted" in message and SECRETS_ENV in message
    assert '{"client_kwargs": {"aws_secret_access_key": "..."}}' in message and "\n" not in message
    with pytest.raises(MissingCredential, match=f"{SECRETS_ENV} is not a JSON object"):
        restore_credentials(redacted, {SECRETS_ENV: "[1, 2]"})


def test_the_marker_is_never_handed_on_as_a_credential():
    with pytest.raises(MissingCredential, match="storage.options.token is redacted"):
        merge_credentials({"token": REDACTED}, {})
    with pytest.raises(MissingCredential, match="storage.options.urls is redacted"):
        merge_credentials({"urls": ["s3://a", REDACTED]}, {})


names = st.one_of(
    st.sampled_from(["key", "secret", "token", "password", "aws_session_token", "client_kwargs", "region", "anon"]),
    st.text(min_size=1, max_size=8),
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=12),
    st.builds(lambda u, p: f"https://{u}:{p}@host/x", st.text("abc", min_size=1, max_size=4), st.text("xyz", max_size=4)),
)
option_trees = st.recursive(
    st.dictionaries(names, leaves, max_size=4),
    lambda children: st.dictionaries(names, st.one_of(leaves, children, st.lists(leaves, max_size=3)), max_size=4),
    max_leaves=20,
)


@given(option_trees)
def test_split_then_merge_is_the_identity_and_the_redacted_side_holds_no_credential(options):
    redacted, found = split_credentials(options)
    assert merge_credentials(redacted, found) == options
    assert restore_credentials(redacted, credentials_environment(options)) == options
    again, nothing = split_credentials(redacted)
    assert again == redacted
    assert all(value is None or value == REDACTED for value in _leaves(nothing))
    assert "@host" not in json.dumps(redacted)


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree
