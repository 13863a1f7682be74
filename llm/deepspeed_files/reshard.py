"""Per-parameter training state for fp32 stage-0 engines, the form in which a checkpoint changes layout.

DeepSpeed's universal checkpoint holds, for each parameter name, its fp32 value and Adam
moments (``zero/NAME/{fp32,exp_avg,exp_avg_sq,step}.pt``) plus the optimizer's group
settings (``zero/optimizer_state.pt``).  DeepSpeed converts ZeRO checkpoints into it and
loads it into ZeRO engines.  This module covers the two directions it leaves out, both
for fp32 stage-0 engines (which one data-parallel rank runs, see ``llm.layout``):

* a stage-0 checkpoint written as a universal one, so ZeRO engines of any size load it;
* a universal checkpoint loaded into a stage-0 engine.
"""

from __future__ import annotations

import glob
import os

import deepspeed
import torch

from llm import tensor_split
from llm.deepspeed_files.names import MODEL_STATES
from llm.deepspeed_files.safe_load import load_weights_only

UNIVERSAL_LATEST = "latest_universal"
# ZeRO-3 engines read rank 0's model states under this name.
ZERO3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


def optimizer_group_names(module_state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Parameter names in the optimizer's groups (``llm.engine.param_groups``): matrices, then
    vectors, each in parameter order, a tied weight once (under its first name)."""
    seen: set[int] = set()
    matrices, vectors = [], []
    for name, tensor in module_state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        (matrices if tensor.ndim >= 2 else vectors).append(name)
    return [matrices, vectors]


def _save_state(folder: str, key: str, value: torch.Tensor) -> None:
    torch.save({"cat_dim": 0, "param": value.detach().float().contiguous()}, os.path.join(folder, f"{key}.pt"))


def zero0_to_universal(step_dir: str, out_parent: str, tag: str, tensor_slices: int = 1) -> None:
    """Write the fp32 stage-0 checkpoint in ``step_dir`` as the universal checkpoint ``out_parent/tag``.

    A tensor split's ``tensor_slices`` files (``mp_rank_TT``, one per slice) are merged into whole
    parameters and moments (``llm.tensor_split``)."""
    slices = [load_weights_only(os.path.join(step_dir, f"mp_rank_{t:02d}_model_states.pt")) for t in range(tensor_slices)]
    states = slices[0]
    module, optim = states["module"], states["optimizer"]
    if not isinstance(optim, dict) or "state" not in optim:
        raise RuntimeError(f"{step_dir} holds no plain optimizer state; only fp32 stage-0 checkpoints convert here")
    out = os.path.join(out_parent, tag)
    zero_dir = os.path.join(out, "zero")
    whole = {}
    for names, group in zip(optimizer_group_names(module), optim["param_groups"], strict=True):
        for name, index in zip(names, group["params"], strict=True):
            moments = optim["state"][index]
            folder = os.path.join(zero_dir, name)
            os.makedirs(folder, exist_ok=True)
            whole[name] = tensor_split.merge(name, [s["module"][name] for s in slices])
            _save_state(folder, "fp32", whole[name])
            for key in ("exp_avg", "exp_avg_sq"):
                _save_state(folder, key, tensor_split.merge(name, [s["optimizer"]["state"][index][key] for s in slices]))
            torch.save(torch.as_tensor(moments["step"], dtype=torch.float32), os.path.join(folder, "step.pt"))
    step = torch.as_tensor(next(iter(optim["state"].values()))["step"], dtype=torch.float32)
    torch.save(
        {  # no clip_grad: the loading engine keeps its own
            "dynamic_loss_scale": False,
            "overflow": False,
            "ds_version": deepspeed.__version__,
            "param_groups": optim["param_groups"],
            # where ZeRO-3 engines read the step and group settings
            "optimizer_state_dict": {"state": {0: {"step": step}}, "param_groups": optim["param_groups"]},
        },
        os.path.join(zero_dir, "optimizer_state.pt"),
    )
    model_states = {k: v for k, v in states.items() if k != "optimizer"}
    if tensor_slices > 1:  # the unsplit model's states: a tied weight's second name takes its first's tensor
        first = {t.untyped_storage().data_ptr(): name for name, t in reversed(list(module.items()))}
        model_states["module"] = {n: whole[first[t.untyped_storage().data_ptr()]] for n, t in module.items()}
        model_states["mp_world_size"] = 1
        shapes = model_states.get("param_shapes") or []
        for group in [shapes] if isinstance(shapes, dict) else shapes:
            for name in group:
                group[name] = model_states["module"][name].shape
    for name in (MODEL_STATES, ZERO3_MODEL_STATES):
        torch.save(model_states, os.path.join(out, name))
    with open(os.path.join(out_parent, UNIVERSAL_LATEST), "w") as f:
        f.write(tag)


def _universal_step(zero_dir: str) -> torch.Tensor:
    """The optimizer step of a universal checkpoint: in ``step.pt`` of some parameters (ZeRO 1-2
    sources) or in the optimizer state (ZeRO-3 sources)."""
    steps = {float(load_weights_only(path)) for path in glob.glob(os.path.join(zero_dir, "*", "step.pt"))}
    optim = load_weights_only(os.path.join(zero_dir, "optimizer_state.pt"))
    for moments in optim.get("optimizer_state_dict", {}).get("state", {}).values():
        steps.add(float(moments["step"]))
    if len(steps) != 1:
        raise RuntimeError(f"{zero_dir} records optimizer steps {sorted(steps)}; expected exactly one")
    return torch.tensor(steps.pop(), dtype=torch.float32)


def _param_shapes(model_states: dict) -> dict[str, torch.Size]:
    """Every parameter's shape, from the model states' ``param_shapes`` (one mapping per optimizer group)."""
    groups = model_states.get("param_shapes") or []
    groups = [groups] if isinstance(groups, dict) else groups
    return {name: torch.Size(shape) for group in groups for name, shape in group.items()}


def fit_every_zero_stage(universal_dir: str) -> None:
    """Make a universal checkpoint that DeepSpeed converted from a ZeRO checkpoint load into an engine of
    any ZeRO stage, the way :func:`zero0_to_universal` writes one.

    The converter writes what the saving stage's loader reads, and ZeRO 1-2 and ZeRO-3 read different
    things: ZeRO 1-2 a ``ds_version``, the group settings and each parameter's ``step.pt``; ZeRO-3 the
    step and group settings under ``optimizer_state_dict`` and its own model-states file.  A ZeRO-3
    source's model states hold partitioned (empty) weights, so they are rebuilt from the fp32 values.
    """
    zero_dir = os.path.join(universal_dir, "zero")
    optim_path = os.path.join(zero_dir, "optimizer_state.pt")
    optim = load_weights_only(optim_path)
    step = _universal_step(zero_dir)
    groups = optim.get("param_groups") or optim["optimizer_state_dict"]["param_groups"]
    optim.update(param_groups=groups, ds_version=optim.get("ds_version") or deepspeed.__version__)
    optim.setdefault("optimizer_state_dict", {"state": {0: {"step": step}}, "param_groups": groups})
    torch.save(optim, optim_path)
    present = [name for name in (MODEL_STATES, ZERO3_MODEL_STATES) if os.path.exists(os.path.join(universal_dir, name))]
    states = load_weights_only(os.path.join(universal_dir, present[0]))
    module, shapes = states["module"], _param_shapes(states)
    for entry in os.scandir(zero_dir):
        if not entry.is_dir():
            continue
        for key in ("fp32", "exp_avg", "exp_avg_sq"):  # ZeRO-3 sources: flat tensors, where ZeRO 1-2 read {"param": ...}
            saved = load_weights_only(os.path.join(entry.path, f"{key}.pt"))
            if not isinstance(saved, dict):
                _save_state(entry.path, key, saved.reshape(shapes[entry.name]))
        if not os.path.exists(os.path.join(entry.path, "step.pt")):
            torch.save(step.clone(), os.path.join(entry.path, "step.pt"))
    for name, tensor in list(module.items()):
        saved = os.path.join(zero_dir, name, "fp32.pt")
        if tensor.numel() == 0 and os.path.exists(saved):
            module[name] = load_weights_only(saved)["param"].reshape(shapes[name]).to(tensor.dtype)
    for name in (MODEL_STATES, ZERO3_MODEL_STATES):
        torch.save(states, os.path.join(universal_dir, name))


def load_universal_into_plain(ds_engine, universal_dir: str) -> None:
    """Load the universal checkpoint ``universal_dir`` into a stage-0 fp32 DeepSpeed engine:
    weights, Adam moments and step (of a tensor split: this rank's slices of them)."""
    mpu = ds_engine.mpu
    rank, ranks = (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()) if mpu else (0, 1)
    optimizer = ds_engine.optimizer
    zero_dir = os.path.join(universal_dir, "zero")
    step = _universal_step(zero_dir)
    with torch.no_grad():
        for name, param in ds_engine.module.named_parameters():
            folder = os.path.join(zero_dir, name)

            def state(key: str) -> torch.Tensor:
                saved = load_weights_only(os.path.join(folder, f"{key}.pt"))
                saved = saved["param"] if isinstance(saved, dict) else saved
                return tensor_split.shard(name, saved, rank, ranks).reshape(param.shape).to(param.dtype)

            param.copy_(state("fp32"))
            optimizer.state[param] = {"step": step.clone(), "exp_avg": state("exp_avg"), "exp_avg_sq": state("exp_avg_sq")}
