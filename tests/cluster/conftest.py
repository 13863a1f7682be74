"""A real token-authenticated Ray head for the tests of this folder: one head for all of them, started for the
first test that asks for it and stopped after the last one (or when the session ends, whatever happened)."""

from pathlib import Path

import pytest

from support.ray_head import RayHead

HERE = Path(__file__).parent
_running: list[RayHead] = []


@pytest.fixture(scope="session")
def ray_head():
    with RayHead(num_cpus=2) as head:
        _running.append(head)
        try:
            yield head
        finally:
            if head in _running:
                _running.remove(head)


def pytest_runtest_teardown(item, nextitem):
    """Stop the head once no test still to run in this session uses it, rather than keep it idling (and
    taking CPU) through the rest of the session."""
    if not _running:
        return
    items = item.session.items
    later = items[items.index(item) + 1 :]
    if not any(HERE in test.path.parents and "ray_head" in test.fixturenames for test in later):
        _running.pop().stop()  # stopping twice is harmless: the fixture's own teardown does it again
