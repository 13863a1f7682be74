from ops.checkpoints import list_checkpoints


def test_only_committed_checkpoints_count_and_latest_is_marked(runs):
    run = runs.make(checkpoints={2: True, 4: True, 5: False})
    entries = {e.step: e for e in list_checkpoints(run)}
    assert entries[5].committed is False
    assert entries[4].committed and entries[4].latest
    assert not entries[2].latest
