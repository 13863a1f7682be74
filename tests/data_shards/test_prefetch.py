"""Prefetch depth from the measured rates, and the prefetch thread against the reader's upcoming shards."""

import threading

from data_shards.prefetch import Prefetcher, prefetch_depth


def test_depth_covers_one_download_at_the_consumption_rate_plus_one():
    assert prefetch_depth(fetch_s=10.0, consume_s=2.0, room=100) == 6
    assert prefetch_depth(fetch_s=1.0, consume_s=30.0, room=100) == 2
    assert prefetch_depth(fetch_s=10.0, consume_s=0.001, room=7) == 7  # bounded by the room beside what is held
    assert prefetch_depth(fetch_s=None, consume_s=None, room=9) == 2  # before anything is measured
    assert prefetch_depth(fetch_s=1.0, consume_s=1.0, room=0) == 0


class Fetches:
    """Records the shards fetched; answers as a cache with room for ``room`` more would."""

    def __init__(self, room: int, failing: frozenset = frozenset()):
        self.room, self.failing = room, failing
        self.calls: list[int] = []
        self.present: set[int] = set()
        self.done = threading.Event()
        self.expected = 0

    def __call__(self, shard: int) -> str:
        self.calls.append(shard)
        try:
            if shard in self.failing:
                raise OSError("connection reset")
            if shard in self.present:
                return "present"
            if self.room <= 0:
                return "no room"
            self.room -= 1
            self.present.add(shard)
            return "fetched"
        finally:
            if len(self.calls) >= self.expected:
                self.done.set()

    def wait_for(self, n: int, prefetcher: Prefetcher, shards: list[int], started: int = 0) -> None:
        self.done.clear()
        self.expected = len(self.calls) + n
        prefetcher.upcoming(shards, started)
        assert self.done.wait(60)


def test_the_first_upcoming_shards_are_fetched_in_order():
    fetches = Fetches(room=10)
    p = Prefetcher(fetches, room=lambda: 10)
    try:
        fetches.wait_for(2, p, [7, 3, 9, 1])
    finally:
        p.stop()
    assert fetches.calls[:2] == [7, 3]


def test_fetching_stops_at_the_first_shard_without_room_and_a_failure_is_left_to_the_reader():
    fetches = Fetches(room=1, failing=frozenset({5}))
    p = Prefetcher(fetches, room=lambda: 10)
    try:
        fetches.wait_for(2, p, [5, 6, 8, 2])  # two ahead before rates are known: 5 fails, 6 takes the room
        fetches.wait_for(1, p, [5, 8, 2])  # 5 is not retried; 8 finds no room, so 2 is not tried
        fetches.wait_for(2, p, [6, 2])
    finally:
        p.stop()
    assert fetches.calls == [5, 6, 8, 6, 2]
    assert p.fetch_s is not None


def test_consumption_rate_is_measured_from_the_reader_reports():
    fetches = Fetches(room=0)
    p = Prefetcher(fetches, room=lambda: 4)
    try:
        fetches.wait_for(1, p, [1], started=1)
        fetches.wait_for(1, p, [2], started=2)
    finally:
        p.stop()
    assert p.consume_s is not None and p.consume_s > 0
