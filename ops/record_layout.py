"""Where run records live under RUN_URL and how their segment objects are named.

    RUN_URL/metrics/train/<hour>/<writer>…jsonl   metrics rows, one stream of segments per writer
    RUN_URL/events/<hour>/<writer>…jsonl          start, resume, restart, failure, checkpoint, preemption, finish
    RUN_URL/heartbeats/rank-00003.json            last sign of life of each rank (overwritten in place)

A writer is one process (a rank, a launcher).  ``<hour>`` is the UTC hour in which a
segment was written, so a follower re-lists only the newest partitions instead of
every segment of a long run.
"""

from __future__ import annotations

import calendar
import os
import re
import secrets
import socket
import time

METRICS_STREAM = "metrics/train"
EVENTS_STREAM = "events"
HEARTBEATS_DIR = "heartbeats"

PARTITION_FORMAT = "%Y%m%d%H"
_PARTITION = re.compile(r"^\d{10}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def partition_of(t: float) -> str:
    """The partition (UTC hour) that a segment written at ``t`` belongs to."""
    return time.strftime(PARTITION_FORMAT, time.gmtime(t))


def partition_start(name: str) -> float | None:
    """Epoch seconds at which partition ``name`` begins; None for a name that is no partition."""
    if not _PARTITION.match(name):
        return None
    try:
        return float(calendar.timegm(time.strptime(name, PARTITION_FORMAT)))
    except ValueError:
        return None


def new_writer_id() -> str:
    """A name no other writer of the run will pick: start time, host, pid and a random tail.

    The leading start time makes a listing show writers in the order they started.
    """
    host = _UNSAFE.sub("-", socket.gethostname()) or "host"
    return f"{int(time.time() * 1000):013d}-{host}-{os.getpid()}-{secrets.token_hex(3)}"


def heartbeat_name(rank: int) -> str:
    return f"rank-{rank:05d}.json"
