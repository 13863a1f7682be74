"""fp32 weights in ``Transformer.state_dict()`` naming from a DeepSpeed step folder, for every layout.

In a bf16 run these are the optimizer's fp32 master weights, not the bf16 copies the model
trained with.  Every file is read weights only.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Any, Iterator

import torch

from llm import tensor_split
from llm.checkpoint_record import CheckpointRecord
from llm.deepspeed_files.names import BF16_OPTIMIZER_FILE, LAYER_FILE, MODEL_STATES
from llm.deepspeed_files.reshard import optimizer_group_names
from llm.deepspeed_files.safe_load import deepspeed_loads_weights_only, load_weights_only


def pipeline_layer_weights(step_dir: str, layers: int) -> dict[str, torch.Tensor]:
    """Weights of every pipeline layer file (in the training dtype), in Transformer naming."""
    from llm.pipeline import transformer_name

    state = {}
    for name in sorted(os.listdir(step_dir)):
        if match := LAYER_FILE.match(name):
            for key, tensor in load_weights_only(os.path.join(step_dir, name)).items():
                state[transformer_name(int(match.group(1)), key, layers)] = tensor
    return state


def trained_weights(step_dir: str, saved: CheckpointRecord) -> dict[str, torch.Tensor]:
    """The weights the model computed with (bf16 in a bf16 run), in Transformer naming; ZeRO 0-2 and pipelines
    (a tensor split's slices merged)."""
    if saved.layout.pipelined:
        return pipeline_layer_weights(step_dir, saved.model.layers)
    slices = [
        load_weights_only(os.path.join(step_dir, f"mp_rank_{t:02d}_model_states.pt"))["module"]
        for t in range(saved.layout.tensor_parallel)
    ]
    return {name: tensor_split.merge(name, [part[name] for part in slices]) for name in slices[0]}


def _pipeline_fp32_masters(step_dir: str, layers: int, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """fp32 master weights of a bf16 pipeline run, from DeepSpeed's BF16 optimizer partitions.

    Each (data-parallel rank, stage) file holds a slice of every parameter group's flat
    fp32 copy, with the fragment of each parameter it covers; a parameter's fragments in
    data-parallel rank order make up the whole parameter.
    """
    from llm.pipeline import transformer_name

    files = sorted((int(m.group(1)), name) for name in os.listdir(step_dir) if (m := BF16_OPTIMIZER_FILE.match(name)))
    fragments: dict[str, list[torch.Tensor]] = {}
    for _, name in files:
        optim = load_weights_only(os.path.join(step_dir, name))["optimizer_state_dict"]
        for flat, mapping in zip(optim["single_partition_of_fp32_groups"], optim["param_slice_mappings"]):
            for key, fragment in mapping.items():
                layer, _, rest = key.partition(".")
                full = transformer_name(int(layer), rest, layers)
                fragments.setdefault(full, []).append(flat.narrow(0, fragment.start, fragment.numel))
    return {k: torch.cat(fragments[k]).reshape(shape).float() for k, shape in shapes.items() if k in fragments}


def _zero0_fp32_masters(model_states: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """fp32 master weights kept by DeepSpeed's mixed-precision wrapper of a ZeRO-0 bf16 run."""
    optim = model_states.get("optimizer")
    if not isinstance(optim, dict) or "fp32_groups" not in optim:
        return None
    module = model_states["module"]
    masters = {}
    for names, group in zip(optimizer_group_names(module), optim["fp32_groups"]):
        for name, master in zip(names, group, strict=True):
            masters[name] = master.float().reshape(module[name].shape)
    first_name: dict[int, str] = {}
    for name, tensor in module.items():  # a tied alias takes the masters of its first name
        first_name.setdefault(tensor.untyped_storage().data_ptr(), name)
    return {name: masters[first_name[t.untyped_storage().data_ptr()]] for name, t in module.items()}


def consolidate(step_dir: str, saved: CheckpointRecord) -> dict[str, torch.Tensor]:
    """fp32 weights in Transformer naming from the verified DeepSpeed step folder ``step_dir`` on local disk.

    A tensor split's slices are each consolidated as a checkpoint of their own (:func:`slice_view`)
    and concatenated along the dimension ``llm.tensor_split`` names: the weights of the unsplit model.
    """
    slices = saved.layout.tensor_parallel
    if slices == 1:
        return _consolidate_slice(step_dir, saved)
    parts = []
    for rank in range(slices):
        with slice_view(step_dir, rank) as view:
            parts.append(_consolidate_slice(view, saved))
    return {name: tensor_split.merge(name, [part[name] for part in parts]) for name in parts[0]}


@contextlib.contextmanager
def slice_view(step_dir: str, tensor_rank: int) -> Iterator[str]:
    """A folder showing tensor slice ``tensor_rank``'s files of ``step_dir`` under the names of an unsplit
    checkpoint (``mp_rank_TT`` as ``mp_rank_00``), as links, so DeepSpeed's readers take it for one."""
    own = f"mp_rank_{tensor_rank:02d}"
    with tempfile.TemporaryDirectory(prefix="kiln-slice-") as parent:
        view = os.path.join(parent, os.path.basename(step_dir.rstrip("/")))
        os.makedirs(view)
        for name in os.listdir(step_dir):
            if own in name:
                os.symlink(os.path.abspath(os.path.join(step_dir, name)), os.path.join(view, name.replace(own, "mp_rank_00")))
        yield view


def _consolidate_slice(step_dir: str, saved: CheckpointRecord) -> dict[str, torch.Tensor]:
    bf16 = saved.precision == "bf16"
    if saved.layout.pipelined:
        weights = pipeline_layer_weights(step_dir, saved.model.layers)
        if bf16:
            masters = _pipeline_fp32_masters(step_dir, saved.model.layers, {k: v.shape for k, v in weights.items()})
            if set(masters) == set(weights):
                return masters
        return {k: v.float() for k, v in weights.items()}
    if saved.layout.zero_stage >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        parent, tag = os.path.split(step_dir.rstrip("/"))
        chatter = io.StringIO()  # DeepSpeed prints its progress; errors still raise
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), deepspeed_loads_weights_only():
            state = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
        return {k: v.float() for k, v in state.items()}
    model_states = load_weights_only(os.path.join(step_dir, MODEL_STATES))
    masters = _zero0_fp32_masters(model_states) if bf16 else None
    return masters if masters is not None else {k: v.float() for k, v in model_states["module"].items()}
