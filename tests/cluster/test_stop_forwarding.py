"""A Ray Train rank's watcher of the driver's stop flag: a slow read is retried, a dead flag ends the watch."""

from __future__ import annotations

import threading

import ray.exceptions

from cluster import ray_train
from llm.trainer import StopRequest


def _watch(monkeypatch, answers) -> tuple[StopRequest, threading.Thread, threading.Event]:
    """Run the watcher over ``answers`` (a reason, None, or an exception to raise), one per poll."""
    monkeypatch.setattr(ray_train, "STOP_POLL_S", 0.01)
    answers = iter(answers)

    def read_flag():
        answer = next(answers, None)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    stop, done = StopRequest(stop_file=""), threading.Event()
    watcher = threading.Thread(target=ray_train._watch_stop_flag, args=(read_flag, stop, done), daemon=True)
    watcher.start()
    return stop, watcher, done


def test_a_stop_requested_after_a_read_timed_out_still_reaches_the_rank(monkeypatch):
    timeout = ray.exceptions.GetTimeoutError("Get timed out: some object(s) not ready.")
    stop, watcher, done = _watch(monkeypatch, [timeout, None, timeout, "stop requested by the driver"])
    watcher.join(timeout=60)
    done.set()
    assert not watcher.is_alive()
    assert stop.requested and stop.reason == "stop requested by the driver"


def test_the_watch_ends_quietly_when_the_flag_died_with_the_driver(monkeypatch):
    stop, watcher, done = _watch(monkeypatch, [None, ray.exceptions.ActorDiedError()])
    watcher.join(timeout=60)
    done.set()
    assert not watcher.is_alive()
    assert not stop.requested
