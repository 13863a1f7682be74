"""Run events as sentences a person reads at a glance, e.g.
"rank 3 on host b failed with exit code -9; restart 1 of 3 from step 400".

Events are written by ranks (start, init_from, resume, checkpoint, preemption, finish, failure) and by
launchers (restart, failure), which may add rank, host, exit_code, attempt, max_restarts, step
and the ``failures`` they saw (``ops.rank_failure``).  Each kind has a sentence; any other kind
is written as its name and fields.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import ValidationError

from ops.rank_failure import RankFailure

# Fields every event carries (or that say nothing to a reader); left out of the generic form.
BOOKKEEPING = {"time", "event", "pid", "config_hash"}


def _count(n: Any, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def human_count(n: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:g}"


def _who(e: dict[str, Any]) -> str:
    """ "rank 3 on host b", "the ranks" when no rank is named."""
    if e.get("rank") is None:
        return "the ranks" + (f" on host {e['host']}" if e.get("host") and e.get("event") == "restart" else "")
    return f"rank {e['rank']}" + (f" on host {e['host']}" if e.get("host") else "")


def _exit(e: dict[str, Any]) -> str:
    return "" if e.get("exit_code") is None else f" with exit code {e['exit_code']}"


def _restart_of(e: dict[str, Any]) -> str:
    attempt = e.get("attempt")
    if attempt is None:
        return "restarting"
    text = f"restart {attempt}" + (f" of {e['max_restarts']}" if e.get("max_restarts") is not None else "")
    return text + (f" from step {e['step']}" if e.get("step") is not None else "")


def _start(e: dict[str, Any]) -> str:
    parts = [p for p in (e.get("device"), e.get("precision")) if p]
    if e.get("zero_stage") is not None:
        parts.append(f"ZeRO-{e['zero_stage']}")
    if (e.get("pipeline_stages") or 1) > 1:
        parts.append(f"{e['pipeline_stages']} pipeline stages")
    text = "training started"
    if e.get("world_size") is not None:
        text += f" on {_count(e['world_size'], 'rank')}"
    if parts:
        text += f" ({', '.join(str(p) for p in parts)})"
    if e.get("steps") is not None:
        text += f" for {e['steps']} steps"
    return text


def _resume(e: dict[str, Any]) -> str:
    text = f"resumed from the checkpoint of step {e.get('step', '?')}"
    if e.get("world_size") is not None:
        text += f" on {_count(e['world_size'], 'rank')}"
    if e.get("reshaped"):
        text += ", resharded to the new layout"
    return text


def _init_from(e: dict[str, Any]) -> str:
    text = f"started from the checkpoint of step {e.get('step', '?')} of {e.get('run', '?')}"
    text += ", with its optimizer state" if e.get("optimizer") else ", with a fresh optimizer"
    return text + (", resharded to the new layout" if e.get("reshaped") else "")


def _failed_ranks(e: dict[str, Any]) -> str:
    """What a launcher knows of the ranks that failed: its ``failures`` list, else the event's own rank."""
    failures = e.get("failures")
    if isinstance(failures, list) and failures:
        return ", ".join(RankFailure.model_validate(f).describe() for f in failures)
    return f"{_who(e)} failed{_exit(e)}"


def _restart(e: dict[str, Any]) -> str:
    return f"{_failed_ranks(e)}; {_restart_of(e)}"


def _failure(e: dict[str, Any]) -> str:
    if e.get("rank") is not None:  # a rank's own report
        text = f"{_who(e)} failed{_exit(e)}"
        text += f" at step {e['step']}" if e.get("step") is not None else ""
        return text + (f": {e['error']}" if e.get("error") else "")
    text = f"training failed{_exit(e)}"  # a launcher's final word
    if e.get("attempts") is not None:
        text += f" after {_count(e['attempts'], 'attempt')}"
    if e.get("failures"):
        text += f": {_failed_ranks(e)}"
    return text + (f": {e['error']}" if e.get("error") else "")


def _checkpoint(e: dict[str, Any]) -> str:
    text = f"checkpoint saved at step {e.get('step', '?')}"
    return text + (f" ({human_count(e['tokens'])} tokens)" if isinstance(e.get("tokens"), (int, float)) else "")


def _preemption(e: dict[str, Any]) -> str:
    signals = e.get("signals") or {}
    names = sorted(set(signals.values())) if isinstance(signals, dict) else []
    text = "preempted"
    if names:
        ranks = ", ".join(sorted(signals, key=lambda r: int(r) if str(r).isdigit() else 0))
        text += f" ({'/'.join(names)} to rank{'s' if len(signals) > 1 else ''} {ranks})"
    if e.get("step") is not None:
        text += f": saved at step {e['step']}"
    return text + f", exit {e.get('exit_code', 75)} asks to be requeued"


def _finish(e: dict[str, Any]) -> str:
    text = f"finished at step {e.get('step', '?')}"
    return text + (f" after {human_count(e['tokens'])} tokens" if isinstance(e.get("tokens"), (int, float)) else "")


SENTENCES: dict[str, Callable[[dict[str, Any]], str]] = {
    "start": _start,
    "resume": _resume,
    "init_from": _init_from,
    "restart": _restart,
    "failure": _failure,
    "checkpoint": _checkpoint,
    "preemption": _preemption,
    "finish": _finish,
}


def generic_sentence(e: dict[str, Any]) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in sorted(e.items()) if k not in BOOKKEEPING)
    return f"{e.get('event', 'event')}: {fields}" if fields else str(e.get("event", "event"))


def sentence(e: dict[str, Any]) -> str:
    """The event as one sentence; never raises, whatever fields a writer put in."""
    describe = SENTENCES.get(str(e.get("event")))
    if describe is None:
        return generic_sentence(e)
    try:
        return describe(e)
    except (TypeError, ValueError, KeyError, AttributeError, ValidationError):
        return generic_sentence(e)
