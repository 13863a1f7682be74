"""The node's shard cache: private, bounded at every instant, least wanted evicted first, shared safely."""

import fcntl
import hashlib
import os
import stat
import threading

import pytest

from data_shards import shard_cache
from data_shards.errors import DataError
from data_shards.shard_cache import NodeShardCache, cache_dir, private_dir
from ops.storage import Location

SIZE = 1000


@pytest.fixture
def objects(tmp_path):
    """Five 'remote' objects (plain files: the cache logic does not care where bytes come from)."""
    out = []
    for i in range(5):
        data = os.urandom(SIZE)
        path = tmp_path / "bucket" / f"shard-{i}.arrow"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        out.append((hashlib.sha256(data).hexdigest(), SIZE, Location(str(path))))
    return out


def cache(tmp_path, shards_fit: float) -> NodeShardCache:
    return NodeShardCache(int(shards_fit * SIZE), root=tmp_path / "cache")


def test_the_cache_folder_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "fresh"))
    assert stat.S_IMODE(os.stat(cache_dir()).st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(os.stat(private_dir(loose)).st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("KILN_CACHE_DIR", str(shared))
    with pytest.raises(DataError, match=f"cache folder {shared} is writable by other users: point KILN_CACHE_DIR"):
        cache_dir()


def test_a_shard_is_downloaded_once_then_served_from_the_cache(tmp_path, objects):
    c = cache(tmp_path, 3)
    path = c.pin(*objects[0])
    assert open(path, "rb").read() == open(objects[0][2].url, "rb").read()
    c.release(objects[0][0], wanted=True)
    assert c.pin(*objects[0]) == path
    assert c.downloads == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_usage_stays_within_the_limit_and_the_least_wanted_shard_goes_first(tmp_path, objects):
    c = cache(tmp_path, 2)
    a, b, d = objects[0], objects[1], objects[2]
    c.pin(*a)
    c.release(a[0], wanted=False)  # done with it
    c.pin(*b)
    c.release(b[0], wanted=True)
    c.pin(*d)  # room comes from a, not from b which is still wanted
    assert c.usage() <= c.limit
    assert not os.path.exists(c.path(a[0])) and os.path.exists(c.path(b[0]))
    for obj in objects:
        c.pin(*obj)
        c.release(obj[0], wanted=True)
        assert c.usage() <= c.limit
    assert c.downloads == 7


def test_a_held_shard_is_never_evicted_and_a_batch_that_cannot_fit_is_one_line(tmp_path, objects):
    c = cache(tmp_path, 2)
    c.pin(*objects[0])
    c.pin(*objects[1])
    with pytest.raises(DataError, match=r"data.cache_limit_gb=2e-06 cannot hold the shards one batch reads .*raise it"):
        c.pin(*objects[2])
    assert os.path.exists(c.path(objects[0][0])) and os.path.exists(c.path(objects[1][0]))
    assert c.usage() == 2 * SIZE


def test_another_process_holding_a_shard_keeps_it(tmp_path, objects):
    """What a rank holds is marked by a shared flock on the shard's lock file, as a second process would hold it."""
    c = cache(tmp_path, 1)
    c.pin(*objects[0])
    c.release(objects[0][0], wanted=False)
    other = os.open(tmp_path / "cache" / "locks" / f"{objects[0][0]}.lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_SH)
    try:
        assert c.prefetch(*objects[1]) == "no room"
        assert not c._make_room(SIZE, only_unwanted=False)
    finally:
        os.close(other)
    assert c.prefetch(*objects[1]) == "fetched"
    assert not os.path.exists(c.path(objects[0][0]))


def test_prefetch_only_evicts_shards_nobody_wants(tmp_path, objects):
    c = cache(tmp_path, 2)
    for obj in objects[:2]:
        c.pin(*obj)
        c.release(obj[0], wanted=True)
    assert c.prefetch(*objects[2]) == "no room"
    assert c.prefetch(*objects[0]) == "present"
    c.pin(*objects[1])
    c.release(objects[1][0], wanted=False)
    assert c.prefetch(*objects[2]) == "fetched"
    assert {os.path.exists(c.path(o[0])) for o in objects[:3]} == {True, False} and not os.path.exists(c.path(objects[1][0]))


def test_a_stale_download_is_cleared_but_one_in_progress_is_not(tmp_path, objects):
    c = cache(tmp_path, 2)
    stale = c.folder / f".{objects[3][0]}.part-dead"
    stale.write_bytes(b"\0" * SIZE)
    live = c.folder / f".{objects[4][0]}.part-live"
    live.write_bytes(b"\0" * SIZE)
    fetcher = os.open(tmp_path / "cache" / "locks" / f"{objects[4][0]}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fetcher, fcntl.LOCK_EX)
    try:
        c.pin(*objects[0])  # room comes from the part file whose fetcher is gone
        assert not stale.exists() and live.exists()
        assert c.prefetch(*objects[1]) == "no room"
    finally:
        os.close(fetcher)


def test_a_download_finishing_while_room_is_made_cannot_hide_its_bytes(tmp_path, objects, monkeypatch):
    """Room is counted from a listing of the folder, then each entry's size: a part file renamed to its shard in
    between would be counted by neither name, and the cache would take one shard more than its limit."""
    c = cache(tmp_path, 2)
    c.pin(*objects[0])
    downloading = objects[1][0]
    part = str(c.folder / f".{downloading}.part-0")
    with open(part, "wb") as f:
        f.write(os.urandom(SIZE))
    downloader = c._lock_fd(downloading)
    fcntl.flock(downloader, fcntl.LOCK_EX)  # as a rank holds it while it fetches
    finishing = threading.Thread(target=c._complete, args=(part, downloading))
    sized = shard_cache._stat

    def download_finishes_now(entry):
        if entry.path == part and not finishing.is_alive():
            finishing.start()
            finishing.join(timeout=2)  # done unless the rename waits for the room-making to end
        return sized(entry)

    monkeypatch.setattr(shard_cache, "_stat", download_finishes_now)
    try:
        with c._space_lock():  # as _reserve makes room
            assert not c._make_room(SIZE, only_unwanted=False)  # a held shard and a finishing one fill it
    finally:
        finishing.join()
        os.close(downloader)
    assert c.usage() == 2 * SIZE and os.path.exists(c.path(downloading))


def test_a_damaged_or_missing_object_is_a_data_error_naming_it_and_leaves_nothing(tmp_path, objects):
    c = cache(tmp_path, 3)
    sha, size, shard = objects[0]
    url = shard.url
    with open(url, "r+b") as f:  # one byte flipped: always a change, whatever the random bytes were
        f.seek(10)
        byte = f.read(1)[0]
        f.seek(10)
        f.write(bytes([byte ^ 0xFF]))
    with pytest.raises(DataError, match=f"shard {url} is damaged"):
        c.pin(sha, size, shard)
    os.remove(objects[1][2].url)
    with pytest.raises(DataError, match=f"shard {objects[1][2]} named by the manifest is missing"):
        c.pin(*objects[1])
    assert os.listdir(c.folder) == []


def test_threads_asking_for_the_same_shard_share_one_download(tmp_path, objects):
    handles = [cache(tmp_path, 5) for _ in range(4)]
    paths = []
    threads = [threading.Thread(target=lambda h=h: paths.append(h.pin(*objects[0]))) for h in handles]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 1 and sum(h.downloads for h in handles) == 1


def _blocked_flock_waiters(path) -> int:
    """Requests waiting for a flock on ``path``, as the kernel lists them (lines marked "->")."""
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and "FLOCK" in line and inode in line)


def test_a_rank_that_found_no_shard_does_not_wait_for_the_pins_of_the_rank_that_fetched_it(tmp_path, objects, monkeypatch):
    """Two ranks look at once and find nothing; one fetches and pins the shard (holding its lock shared).
    The other must then find the shard, not wait for an exclusive lock until that pin is released."""
    import data_shards.shard_cache as shard_cache

    sha, size, shard = objects[0]
    url = shard.url
    waiter = cache(tmp_path, 5)
    lock = tmp_path / "cache" / "locks" / f"{sha}.lock"
    looked = threading.Event()
    real_sleep = shard_cache.time.sleep
    monkeypatch.setattr(shard_cache.time, "sleep", lambda s: (looked.set(), real_sleep(s)))
    fetcher = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fetcher, fcntl.LOCK_SH)  # the other rank has looked too
    pinned = []
    thread = threading.Thread(target=lambda: pinned.append(waiter.pin(sha, size, shard)), daemon=True)
    thread.start()
    try:
        while not (looked.is_set() or _blocked_flock_waiters(lock)):  # the waiter found nothing and waits
            thread.join(0.01)
        with open(url, "rb") as src, open(waiter.path(sha), "wb") as dst:
            dst.write(src.read())  # the other rank's fetch lands; it keeps the lock shared as its pin
        thread.join(60)
        assert pinned == [waiter.path(sha)] and waiter.downloads == 0
    finally:
        os.close(fetcher)
        thread.join(60)
