"""Ray token authentication: where a client finds the cluster's token, and making a new one.

Ray's Jobs API runs arbitrary code for whoever can reach it, so every Ray cluster Kiln
starts or renders runs with ``RAY_AUTH_MODE=token``.  Clients look for the token where
Ray's own clients do: ``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH`` names,
then ``~/.ray/auth_token``.  The token is sent only as an HTTP header; it is never
printed, logged, or put into configs, job metadata or run records.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
INSECURE_ENV = "KILN_ALLOW_INSECURE_TOKEN"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_locations(environ: dict[str, str] | None = None) -> list[str]:
    """Where :func:`find_token` looks, in order, as a user would write them."""
    env = os.environ if environ is None else environ
    path = env.get(TOKEN_PATH_ENV)
    return [
        f"${TOKEN_ENV}",
        f"${TOKEN_PATH_ENV}" + (f" ({path})" if path else " (unset)"),
        str(default_token_path()),
    ]


def find_token(environ: dict[str, str] | None = None) -> str | None:
    """The cluster token a Ray client would use, or None."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip()
    for path in (env.get(TOKEN_PATH_ENV), default_token_path()):
        if path and os.path.isfile(path):
            token = Path(path).read_text(encoding="utf-8").strip()
            if token:
                return token
    return None


def auth_headers(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The HTTP header that authenticates to a token-protected Ray dashboard (empty without a token)."""
    token = find_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as written in a URL) is this machine's loopback: localhost, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_token_allowed(flag: bool = False, environ: dict[str, str] | None = None) -> bool:
    """Whether the user asked for the token to go over plain http to another machine (flag or environment)."""
    env = os.environ if environ is None else environ
    return flag or env.get(INSECURE_ENV, "").strip().lower() in ("1", "true", "yes")


def plain_http_refusal(address: str) -> str | None:
    """Why the token must not be sent to ``address``, in one line, or None where it may.

    Over plain http anyone on the network path reads the Bearer header, and with it may run any
    code on the cluster; so it goes only over https, or to a loopback address (which an SSH
    tunnel provides), unless the user allows otherwise.
    """
    parsed = urlparse(address)
    if parsed.scheme != "http" or is_loopback(parsed.hostname or ""):
        return None
    return (
        f"not sending the Ray token to {address} over plain http, where anyone on the network path can read it: "
        f"use an https:// address, or an SSH tunnel (ssh -L 8265:127.0.0.1:8265 {parsed.hostname}, then "
        f"--address http://127.0.0.1:8265), or on a network you trust --allow-insecure-token ({INSECURE_ENV}=1)"
    )


def write_new_token(path: str | os.PathLike) -> Path:
    """A new random token (256 bits, as Ray makes them) in a file only its owner can read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_hex(32))
    return path


@contextlib.contextmanager
def private_token(folder: str | os.PathLike) -> Iterator[Path]:
    """Token authentication for a Ray started in this process, with a new token kept in ``folder``.

    ``folder`` must be private to the user (``tempfile.mkdtemp`` makes it 0700).  For the duration,
    ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` name the new token, so the Ray processes
    started here require it and this process presents it; a ``RAY_AUTH_TOKEN`` of the user's is
    set aside, and neither Ray's default (``~/.ray/auth_token``, shared by every local Ray of the
    user) nor Ray's choice of whether to authenticate at all is relied on.  The environment is
    restored afterwards.
    """
    path = write_new_token(Path(folder) / "auth_token")
    saved = {name: os.environ.get(name) for name in (AUTH_MODE_ENV, TOKEN_PATH_ENV, TOKEN_ENV)}
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[TOKEN_PATH_ENV] = str(path)
    os.environ.pop(TOKEN_ENV, None)
    _reload_ray_token()
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_token()


def _reload_ray_token() -> None:
    """Make this process's Ray re-read the auth mode and token from the environment.

    Ray caches both once per process; without this a second Ray started by the same command
    would be offered the first one's token.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
