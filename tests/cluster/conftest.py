"""A real token-authenticated Ray head for the tests of this folder (started once per module)."""

import pytest

from support.ray_head import RayHead


@pytest.fixture(scope="module")
def ray_head():
    with RayHead(num_cpus=2) as head:
        yield head
