"""Credentials in ``storage.options``: kept out of everything Kiln writes, carried in the environment.

A storage option is a credential when its key names a key, secret, token, password, session or
credential (at any depth: ``client_kwargs.aws_secret_access_key``), or when its value is a URL with
user info (``https://user:pass@host``).  Whatever Kiln writes (the run's ``config.yaml``, rendered
scripts and manifests, a job's package, a rank's job file) holds :data:`REDACTED` in its place; the
real values travel in the environment variable :data:`SECRETS_ENV`, a JSON object shaped like
``storage.options`` that holds only the credentials, which every process merges back when it loads
a config or a job.  On Kubernetes that variable comes from the Secret named with ``--secret``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

REDACTED = "***redacted***"
SECRETS_ENV = "KILN_STORAGE_SECRETS"
CREDENTIAL_KEY = re.compile(r"key|secret|token|passw|session|credential", re.IGNORECASE)
USER_INFO_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")


class MissingCredential(ValueError):
    """A redacted credential with no value in the environment; the message is one line."""


def is_credential_key(key: object) -> bool:
    return isinstance(key, str) and bool(CREDENTIAL_KEY.search(key))


def has_user_info(value: object) -> bool:
    """Whether ``value`` is a URL that carries user info (``scheme://user[:password]@host``)."""
    return isinstance(value, str) and bool(USER_INFO_URL.match(value))


def _holds_user_info(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_holds_user_info(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_user_info(v) for v in value)
    return has_user_info(value)


def split_credentials(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options with every credential replaced by REDACTED, the credentials alone)``, both shaped like
    ``options``; merging the second into the first with :func:`merge_credentials` gives ``options`` back."""
    redacted: dict[str, Any] = {}
    found: dict[str, Any] = {}
    for key, value in options.items():
        if value is not None and (is_credential_key(key) or (not isinstance(value, dict) and _holds_user_info(value))):
            redacted[key], found[key] = REDACTED, value
        elif isinstance(value, dict):
            redacted[key], inner = split_credentials(value)
            if inner:
                found[key] = inner
        else:
            redacted[key] = value
    return redacted, found


def credential_keys(options: Mapping[str, Any], where: str = "storage.options") -> list[str]:
    """The dotted keys of the credentials in ``options``."""
    _, found = split_credentials(options)

    def walk(tree: Mapping[str, Any], prefix: str) -> list[str]:
        keys = []
        for key, value in tree.items():
            redacted_here = split_credentials({key: value})[0][key] == REDACTED
            keys += [f"{prefix}.{key}"] if redacted_here or not isinstance(value, dict) else walk(value, f"{prefix}.{key}")
        return keys

    return walk(found, where)


def merge_credentials(
    options: Mapping[str, Any], credentials: Mapping[str, Any], where: str = "storage.options"
) -> dict[str, Any]:
    """``options`` with ``credentials`` merged in (they win); MissingCredential names the first key still
    REDACTED, so a redaction marker is never handed to a store as a credential."""
    merged = _deep_merge(options, credentials)
    missing = _first_marker(merged, where)
    if missing:
        raise MissingCredential(
            f"{missing} is redacted ({REDACTED}) and {SECRETS_ENV} does not give it: set {SECRETS_ENV} to a JSON "
            f"object of the secret storage options, e.g. {_example(missing)} (on Kubernetes, in the --secret)"
        )
    return merged


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _deep_merge(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def _first_marker(tree: Any, where: str) -> str | None:
    """The dotted key of the first value in ``tree`` that holds the redaction marker."""
    if isinstance(tree, dict):
        return next((found for k, v in tree.items() if (found := _first_marker(v, f"{where}.{k}"))), None)
    if isinstance(tree, (list, tuple)):
        return where if any(_first_marker(v, where) for v in tree) else None
    return where if isinstance(tree, str) and REDACTED in tree else None


def _example(key: str) -> str:
    example: Any = "..."
    for part in reversed(key.split(".")[2:]):
        example = {part: example}
    return json.dumps(example)


def credentials_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The credentials :data:`SECRETS_ENV` holds (none when unset); MissingCredential when it is not a JSON object."""
    raw = environ.get(SECRETS_ENV, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise MissingCredential(f'{SECRETS_ENV} is not a JSON object of storage options (e.g. {{"secret": "..."}})')
    return value


def restore_credentials(options: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``options`` as loaded from a file, with the credentials of ``environ`` merged back."""
    return merge_credentials(options, credentials_from_env(environ))


def credentials_environment(options: Mapping[str, Any]) -> dict[str, str]:
    """The environment that carries the credentials of ``options`` to another process (empty when none)."""
    _, found = split_credentials(options)
    return {SECRETS_ENV: json.dumps(found, sort_keys=True)} if found else {}
