"""The in-memory snapshot a save takes: by reference first, copied later, exactly what torch.save would write."""

import io
from collections import OrderedDict

import pytest
import torch

from llm.snapshot import Snapshot


def saved_and_loaded(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def single_file(snapshot):
    ((name, state),) = list(snapshot.files())
    return state


def test_the_copy_holds_the_values_at_snapshot_time_not_later_ones():
    weight = torch.arange(6, dtype=torch.float32)
    snapshot = Snapshot()
    snapshot.add("model.pt", {"weight": weight, "step": 3})
    snapshot.copy()
    weight.add_(100)  # the next optimizer step
    state = single_file(snapshot)
    assert state["step"] == 3
    assert torch.equal(state["weight"], torch.arange(6, dtype=torch.float32))


def test_plain_values_are_copied_at_once_so_later_changes_do_not_leak_in():
    groups = [{"lr": 0.1, "params": [0]}]
    snapshot = Snapshot()
    snapshot.add("optim.pt", {"param_groups": groups})
    groups[0]["lr"] = 0.5
    snapshot.copy()
    assert single_file(snapshot)["param_groups"][0]["lr"] == 0.1


def test_tied_tensors_stay_one_tensor_in_the_file():
    embed = torch.randn(5, 3)
    snapshot = Snapshot()
    snapshot.add("model.pt", OrderedDict(embed=embed, head=embed))
    snapshot.copy()
    loaded = saved_and_loaded(single_file(snapshot))
    assert loaded["embed"].untyped_storage().data_ptr() == loaded["head"].untyped_storage().data_ptr()
    assert torch.equal(loaded["head"], embed)


def test_views_into_a_flat_buffer_bring_only_the_bytes_they_cover():
    flat = torch.arange(1000, dtype=torch.float32)
    layer = {"w": flat[100:110].view(2, 5), "b": flat[110:112]}
    snapshot = Snapshot()
    snapshot.add("layer_01-model_states.pt", layer)
    snapshot.copy()
    state = single_file(snapshot)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert buffer.getbuffer().nbytes < 4 * 1000 / 2  # not the whole 4000-byte buffer
    loaded = saved_and_loaded(state)
    assert torch.equal(loaded["w"], layer["w"]) and torch.equal(loaded["b"], layer["b"])


def test_strided_views_dtypes_parameters_and_grad_flags_survive():
    grid = torch.randn(4, 6)
    master = torch.nn.Parameter(torch.randn(3))
    state = OrderedDict(t=grid.t(), half=torch.randn(4).to(torch.bfloat16), master=master, ids=torch.arange(3))
    state._metadata = {"": {"version": 1}}
    snapshot = Snapshot()
    snapshot.add("x.pt", state)
    snapshot.copy()
    copy = single_file(snapshot)
    assert copy._metadata == {"": {"version": 1}}
    assert torch.equal(copy["t"], grid.t()) and copy["t"].stride() == grid.t().stride()
    assert copy["half"].dtype == torch.bfloat16 and torch.equal(copy["half"], state["half"])
    assert isinstance(copy["master"], torch.nn.Parameter) and copy["master"].requires_grad
    assert torch.equal(copy["ids"], torch.arange(3))


def test_files_cannot_be_read_before_the_copy():
    snapshot = Snapshot()
    snapshot.add("x.pt", {"w": torch.zeros(2)})
    with pytest.raises(RuntimeError, match="before it was copied"):
        single_file(snapshot)
