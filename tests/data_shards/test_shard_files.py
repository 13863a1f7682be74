import pytest

from data_shards.errors import DataError
from data_shards.shard_files import ShardFiles


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"shard-{i}.bin"
        path.write_bytes(bytes(range(i * 50, i * 50 + 50)))
        paths.append(str(path))
    return paths


def test_ranges_from_many_files_land_one_after_another_with_few_descriptors_open(files):
    reader = ShardFiles(max_open=2)
    out = bytearray(12)
    reader.read([files[2], files[0], files[1], files[2]], [0, 10, 5, 48], [4, 13, 8, 50], memoryview(out))
    assert bytes(out) == bytes([100, 101, 102, 103, 10, 11, 12, 55, 56, 57, 148, 149])
    assert len(reader._fds) == 2
    reader.close()
    assert not reader._fds


def test_a_range_past_the_end_of_a_shard_is_a_data_error_naming_it(files):
    reader = ShardFiles()
    with pytest.raises(DataError, match="shard-1.bin is shorter than its document index says"):
        reader.read([files[1]], [40], [60], memoryview(bytearray(20)))
    reader.close()
