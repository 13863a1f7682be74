"""Checkpoints under ``RUN_URL/checkpoints/``: save with a commit protocol, resume, prune, consolidate.

    checkpoints/step-00000100/   DeepSpeed files (every rank's part) + COMMITTED (written last)
    checkpoints/latest           name of the newest committed step dir, written after COMMITTED

Commit order: every rank writes its files → barrier → rank 0 writes COMMITTED →
rank 0 writes ``latest``.  A crash at any instant leaves the previous committed
checkpoint intact and resumable.  On an object store each rank saves into its own
local staging folder and uploads its own files; COMMITTED is only written after
every upload has finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist

from llm import reshard
from ops import storage
from ops.checkpoints import CHECKPOINTS_DIR, COMMITTED, LATEST, parse_step, step_name


def checkpoints_url(run_url: str) -> str:
    return storage.join(run_url, CHECKPOINTS_DIR)


def step_url(run_url: str, step: int) -> str:
    return storage.join(run_url, CHECKPOINTS_DIR, step_name(step))


def step_dirs(run_url: str, storage_options: dict | None = None) -> list[int]:
    """Steps that have a folder, committed or not, ascending."""
    names = storage.list_names(checkpoints_url(run_url), storage_options)
    return sorted(s for s in (parse_step(n) for n in names) if s is not None)


def committed_steps(run_url: str, storage_options: dict | None = None) -> list[int]:
    return [s for s in step_dirs(run_url, storage_options)
            if storage.exists(storage.join(step_url(run_url, s), COMMITTED), storage_options)]


def latest_committed_step(run_url: str, storage_options: dict | None = None) -> int | None:
    """The step ``latest`` names when it is committed; otherwise the newest committed step, with a warning."""
    latest_url = storage.join(checkpoints_url(run_url), LATEST)
    pointer = None
    if storage.exists(latest_url, storage_options):
        pointer = storage.read_text(latest_url, storage_options).strip()
        named = parse_step(pointer)
        if named is not None and storage.exists(storage.join(step_url(run_url, named), COMMITTED), storage_options):
            return named
    committed = committed_steps(run_url, storage_options)
    fallback = committed[-1] if committed else None
    if pointer is not None or fallback is not None:
        warnings.warn(
            f"{latest_url} {'names ' + repr(pointer) + ', which is not committed' if pointer is not None else 'is missing'}; "
            f"using {step_name(fallback) if fallback is not None else 'no checkpoint'}",
            stacklevel=2,
        )
    return fallback


def read_commit(run_url: str, step: int, storage_options: dict | None = None) -> dict[str, Any]:
    """What COMMITTED records about a checkpoint: layout, model config, vocab size, tokens seen."""
    return storage.read_json(storage.join(step_url(run_url, step), COMMITTED), storage_options)


def steps_to_prune(all_steps: list[int], committed: list[int], keep: int) -> list[int]:
    """Folders to delete: committed ones beyond the newest ``keep``, and abandoned partial saves older
    than the newest committed one.  The newest committed step and anything newer (a save that may
    be in progress) are never chosen."""
    if not committed:
        return []
    newest = committed[-1]
    kept = set(sorted(committed)[-max(1, keep):])
    return [s for s in all_steps if s < newest and s not in kept]


def prune(run_url: str, keep: int, storage_options: dict | None = None) -> list[int]:
    doomed = steps_to_prune(step_dirs(run_url, storage_options), committed_steps(run_url, storage_options), keep)
    for step in doomed:
        # Remove the marker first, so a half-deleted folder never looks committed.
        storage.remove(storage.join(step_url(run_url, step), COMMITTED), storage_options)
        storage.remove(step_url(run_url, step), storage_options, recursive=True)
    return doomed


def _staging_dir(run_url: str, rank: int) -> str:
    key = hashlib.sha256(run_url.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "kiln-checkpoints", key, f"rank-{rank:05d}")


def save(engine, run_url: str, step: int, client_state: dict[str, Any], commit_info: dict[str, Any],
         keep: int, storage_options: dict | None = None) -> str:
    """Collective: every rank calls it.  Returns the URL of the committed step folder."""
    rank = dist.get_rank()
    tag = step_name(step)
    target = step_url(run_url, step)
    local = storage.is_local(run_url)
    if local:
        save_dir = storage.filesystem(checkpoints_url(run_url), storage_options)[1]
    else:
        save_dir = _staging_dir(run_url, rank)
        shutil.rmtree(save_dir, ignore_errors=True)
    os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
    engine.save_checkpoint(save_dir, tag=tag, client_state=client_state, save_latest=False)
    if not local:
        storage.upload_dir(os.path.join(save_dir, tag), target, storage_options)
        shutil.rmtree(save_dir, ignore_errors=True)
    dist.barrier()
    if rank == 0:
        info = {"step": step, "time": time.time(), "world_size": dist.get_world_size(), **commit_info}
        storage.write_json(storage.join(target, COMMITTED), info, storage_options)
        storage.write_text(storage.join(checkpoints_url(run_url), LATEST), tag + "\n", storage_options)
        prune(run_url, keep, storage_options)
    dist.barrier()
    return target


def reshape_route(info: dict[str, Any], world_size: int, zero_stage: int, pipeline_stages: int) -> str | None:
    """How a committed checkpoint loads into an engine of ``world_size`` ranks running ``zero_stage``.

    None: DeepSpeed loads it as saved (same layout, or stage 0 on both sides, which
    partitions nothing).  Otherwise it goes through per-parameter (universal) state:
    ``"universal"`` into a ZeRO engine by DeepSpeed, ``"plain"`` into a stage-0 engine
    (``llm.reshard``).
    """
    saved_stage = int(info.get("zero_stage", 0))
    reshaped = int(info.get("world_size", world_size)) != world_size or saved_stage != zero_stage
    if not reshaped:
        return None
    if pipeline_stages > 1 or int(info.get("pipeline_stages", 1)) > 1:
        raise RuntimeError(
            f"checkpoint step {info.get('step')} was saved by {info.get('world_size')} ranks with "
            f"pipeline_stages={info.get('pipeline_stages', 1)}; a pipelined run resumes only on the same "
            f"world size and layout (now {world_size} ranks, pipeline_stages={pipeline_stages})"
        )
    if saved_stage == 0 and zero_stage == 0:
        return None
    if saved_stage == 0 and info.get("precision") == "bf16":
        raise RuntimeError(
            f"checkpoint step {info.get('step')} is a bf16 ZeRO-0 checkpoint of {info.get('world_size')} ranks; "
            f"it resumes only as bf16 ZeRO-0 (now {world_size} ranks, zero_stage={zero_stage})"
        )
    return "universal" if zero_stage >= 1 or info.get("precision") == "bf16" else "plain"


def _to_universal(step_dir: str, out_parent: str, tag: str, info: dict[str, Any]) -> None:
    """Convert one local DeepSpeed step folder into ``out_parent/tag`` in the universal format."""
    shutil.rmtree(out_parent, ignore_errors=True)
    os.makedirs(out_parent, exist_ok=True)
    if int(info.get("zero_stage", 0)) == 0:
        reshard.zero0_to_universal(step_dir, out_parent, tag)
        return
    cmd = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", step_dir, "--output_folder", os.path.join(out_parent, tag),
        "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"converting {step_dir} to a universal checkpoint failed: {proc.stderr.strip()[-500:]}")


def _universal_copy(run_url: str, step: int, info: dict[str, Any], storage_options: dict | None) -> str:
    """Collective: one rank per host converts the step to the universal format in a local folder;
    returns that folder's parent (the load dir)."""
    tag = step_name(step)
    key = hashlib.sha256(f"{run_url}/{tag}".encode()).hexdigest()[:16]
    parent = os.path.join(tempfile.gettempdir(), "kiln-universal", key)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        if storage.is_local(run_url):
            _to_universal(storage.filesystem(step_url(run_url, step), storage_options)[1], parent, tag, info)
        else:
            with tempfile.TemporaryDirectory(prefix="kiln-reshape-") as tmp:
                local_dir = os.path.join(tmp, tag)
                storage.download_dir(step_url(run_url, step), local_dir, storage_options)
                _to_universal(local_dir, parent, tag, info)
    dist.barrier()
    return parent


def _load_reshaped(engine, run_url: str, step: int, storage_options: dict | None, route: str) -> dict[str, Any]:
    tag = step_name(step)
    load_dir = _universal_copy(run_url, step, read_commit(run_url, step, storage_options), storage_options)
    if route == "plain":
        client_state = reshard.load_universal_into_plain(engine, os.path.join(load_dir, tag))
    else:
        path, client_state = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the universal form of {step_url(run_url, step)}")
    dist.barrier()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        shutil.rmtree(load_dir, ignore_errors=True)
    return client_state


def load(engine, run_url: str, step: int, storage_options: dict | None = None,
         route: str | None = None) -> dict[str, Any]:
    """Collective: restore engine (weights, optimizer) from a committed step; returns the client state.

    ``route`` is :func:`reshape_route`'s answer: a changed layout loads through per-parameter
    state (for ``"universal"`` the engine must have been built with ``checkpoint.load_universal``).
    """
    if route is not None:
        return _load_reshaped(engine, run_url, step, storage_options, route)
    tag = step_name(step)
    if storage.is_local(run_url):
        load_dir = storage.filesystem(checkpoints_url(run_url), storage_options)[1]
    else:
        load_dir = _staging_dir(run_url, dist.get_rank())
        shutil.rmtree(load_dir, ignore_errors=True)
        storage.download_dir(step_url(run_url, step), os.path.join(load_dir, tag), storage_options)
    path, client_state = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {step_url(run_url, step)}")
    if not storage.is_local(run_url):
        shutil.rmtree(load_dir, ignore_errors=True)
    return client_state


def pipeline_layer_weights(step_dir: str, layers: int) -> dict[str, torch.Tensor]:
    """Weights of every pipeline layer file (in the training dtype), in Transformer naming."""
    from llm.pipeline import transformer_name

    state = {}
    for name in sorted(os.listdir(step_dir)):
        match = re.match(r"^layer_(\d+)-model_states\.pt$", name)
        if match:
            part = torch.load(os.path.join(step_dir, name), map_location="cpu", weights_only=True)
            for key, tensor in part.items():
                state[transformer_name(int(match.group(1)), key, layers)] = tensor
    return state


def _pipeline_fp32_masters(step_dir: str, layers: int, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """fp32 master weights of a bf16 pipeline run, from DeepSpeed's BF16 optimizer partitions.

    Each (data-parallel rank, stage) file holds a slice of every parameter group's flat
    fp32 copy, with the fragment of each parameter it covers; a parameter's fragments in
    data-parallel rank order make up the whole parameter.
    """
    from llm.pipeline import transformer_name

    pattern = re.compile(r"^bf16_zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
    files = sorted((int(m.group(1)), name) for name in os.listdir(step_dir) if (m := pattern.match(name)))
    fragments: dict[str, list[torch.Tensor]] = {}
    for _, name in files:
        optim = torch.load(os.path.join(step_dir, name), map_location="cpu", weights_only=False)["optimizer_state_dict"]
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
    for names, group in zip(reshard.optimizer_group_names(module), optim["fp32_groups"]):
        for name, master in zip(names, group, strict=True):
            masters[name] = master.float().reshape(module[name].shape)
    first_name: dict[int, str] = {}
    for name, tensor in module.items():  # a tied alias takes the masters of its first name
        first_name.setdefault(tensor.untyped_storage().data_ptr(), name)
    return {name: masters[first_name[t.untyped_storage().data_ptr()]] for name, t in module.items()}


def _consolidate(step_dir: str, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """fp32 weights in Transformer naming from a DeepSpeed step folder on local disk.

    In a bf16 run these are the optimizer's fp32 master weights, not the bf16 copies.
    """
    bf16 = info.get("precision") == "bf16"
    if info.get("pipeline_stages", 1) > 1:
        layers = info["model"]["layers"]
        weights = pipeline_layer_weights(step_dir, layers)
        if bf16:
            masters = _pipeline_fp32_masters(step_dir, layers, {k: v.shape for k, v in weights.items()})
            if set(masters) == set(weights):
                return masters
        return {k: v.float() for k, v in weights.items()}
    if info.get("zero_stage", 0) >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        parent, tag = os.path.split(step_dir.rstrip("/"))
        chatter = io.StringIO()  # DeepSpeed prints its progress; errors still raise
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            state = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
        return {k: v.float() for k, v in state.items()}
    model_states = torch.load(os.path.join(step_dir, "mp_rank_00_model_states.pt"), map_location="cpu",
                              weights_only=False)
    masters = _zero0_fp32_masters(model_states) if bf16 else None
    return masters if masters is not None else {k: v.float() for k, v in model_states["module"].items()}


def load_model_state(run_url: str, step: int | None = None,
                     storage_options: dict | None = None) -> tuple[int, dict[str, torch.Tensor]]:
    """Consolidated fp32 weights of a committed checkpoint in ``Transformer.state_dict()`` naming.

    Works for every ZeRO stage and pipeline layout, in a plain process without
    torch.distributed.  ``step=None`` takes the latest committed step.
    """
    if step is None:
        step = latest_committed_step(run_url, storage_options)
        if step is None:
            raise FileNotFoundError(f"{checkpoints_url(run_url)} holds no committed checkpoint")
    elif not storage.exists(storage.join(step_url(run_url, step), COMMITTED), storage_options):
        raise FileNotFoundError(f"{step_url(run_url, step)} is not a committed checkpoint")
    info = read_commit(run_url, step, storage_options)
    if storage.is_local(run_url):
        return step, _consolidate(storage.filesystem(step_url(run_url, step), storage_options)[1], info)
    with tempfile.TemporaryDirectory(prefix="kiln-consolidate-") as tmp:
        local_dir = os.path.join(tmp, step_name(step))
        storage.download_dir(step_url(run_url, step), local_dir, storage_options)
        return step, _consolidate(local_dir, info)


def load_model(run_url: str, step: int | None = None, storage_options: dict | None = None):
    """A ``Transformer`` in eval mode holding a committed checkpoint's weights, and its step."""
    from llm.config import ModelConfig
    from llm.model import Transformer

    step, state = load_model_state(run_url, step, storage_options)
    info = read_commit(run_url, step, storage_options)
    model = Transformer(ModelConfig.model_validate(info["model"]), int(info["vocab_size"]))
    if model.cfg.tie_embeddings:
        state.setdefault("head.proj.weight", state.get("embed.weight"))
        state.setdefault("embed.weight", state.get("head.proj.weight"))
    model.load_state_dict(state)
    return step, model.eval()
