"""Hostile values in a config or on the command line never change the shape of a rendered job.

Hypothesis fills every string field of the config and every string option of `kiln launch slurm|k8s` with
text made of newlines, quotes, ``$( )``, backticks, ``---``, ``#``, NUL and unicode. Every render is then
either a one-line error, or:

- an sbatch script (plain and ``--ray``) that ``bash -n`` accepts and that, run with recorders in place of
  srun, scontrol, ray and kiln, in a mount namespace of its own with a fresh /tmp, writes nothing outside its
  own job folder and hands kiln exactly the values of the config;
- a Kubernetes manifest of exactly one ConfigMap and one RayJob, whose values read back unchanged.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from launch.cli import main

# Pieces that have broken scripts and manifests elsewhere; hypothesis strings them together with random text.
NASTY = [
    "\n",
    "\r",
    "\x00",
    "'",
    '"',
    "\\",
    "$(touch /tmp/PWNED)",
    "`touch PWNED`",
    "${HOME}",
    "; touch PWNED;",
    "\ntouch /tmp/PWNED  # ",
    "---",
    "\n---\nkind: Pod\n",
    "#",
    "KILN_CONFIG_END",
    "\nKILN_CONFIG_END\n",
    "KILN_NODE_STEP",
    "EOF",
    ": ",
    "- ",
    "{",
    "[",
    "*",
    "!",
    "&",
    "|",
    "%",
    "\t",
    " ",
    "é",
    "\u2028",
    "\U0001f525",
]
hostile = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=4)), max_size=6).map("".join)
name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True)
k8s_name = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
url = hostile.map(lambda text: "s3://bucket/" + text)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A value that a check stands between: valid three times in four, so that most jobs still render."""
    return st.one_of(valid, valid, valid, hostile)


# Config fields (dotted path -> strategy) that hold strings; each example sets some of them. Free-text fields
# (URLs, field names, addresses) take any text; names and choices are checked, and mostly valid.
CONFIG_STRINGS = {
    "run.name": mostly(name),
    "run.dir": st.one_of(url, hostile),
    "data.output": mostly(url),
    "data.inputs": st.lists(st.one_of(url, hostile), max_size=3),
    "data.val_inputs": st.lists(hostile, max_size=2),
    "data.text_field": hostile,
    "data.tokenizer": hostile,
    "data.on_error": mostly(st.sampled_from(["stop", "skip"])),
    "train.precision": mostly(st.just("fp32")),
    "cluster.address": hostile,
    "storage.options": st.fixed_dictionaries(
        {"endpoint_url": hostile, "client_kwargs": st.fixed_dictionaries({"region_name": hostile})}
    ),
    "eval.tasks": st.lists(
        st.fixed_dictionaries({"type": st.just("multiple_choice"), "name": mostly(name), "path": hostile, "limit": st.none()}),
        max_size=1,
    ),
}
config_values = st.fixed_dictionaries({}, optional=CONFIG_STRINGS)
slurm_options = st.fixed_dictionaries(
    {"gpus-per-node": st.sampled_from(["0", "4"])},
    optional={
        "partition": mostly(name),
        "account": mostly(name),
        "qos": mostly(name),
        "time": mostly(st.sampled_from(["30", "2-00:00:00", "UNLIMITED"])),
        "signal": mostly(st.sampled_from(["USR1", "TERM"])),
    },
)
k8s_options = st.fixed_dictionaries(
    {"gpus-per-node": st.sampled_from(["0", "8"]), "image": mostly(st.just("registry.example:5000/kiln:1.0"))},
    optional={
        "namespace": mostly(k8s_name),
        "secret": mostly(k8s_name),
        "memory-per-node": mostly(st.just("32Gi")),
    },
)
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def config_tree(values: dict) -> dict:
    tree = {
        "run": {"name": "hostile", "dir": "s3://bucket/runs/hostile"},
        "data": {"inputs": ["s3://bucket/raw/*.jsonl"], "output": "s3://bucket/data"},
        "train": {"nproc": 2, "micro_batch": 1, "global_batch": 8},
    }
    for path, value in values.items():
        section, key = path.split(".")
        tree.setdefault(section, {})[key] = value
    # What the config file written from it means: YAML folds a raw line break of its own (NEL, LS, PS)
    # inside a quoted value into a space, so the file gives that, not the string it was written from.
    return yaml.safe_load(yaml.safe_dump(tree, allow_unicode=True))


def dig(tree: dict, path: str):
    section, key = path.split(".")
    return tree[section][key]


def assert_carried(shipped: dict, tree: dict, values: dict) -> None:
    """The config a job carries holds every value as the config file gave it."""
    for path in values:
        if path != "run.dir":
            assert dig(shipped, path) == dig(tree, path), path
    assert shipped["run"]["dir"] == (tree["run"]["dir"] or f"runs/{tree['run']['name']}")
    assert shipped["data"]["output"] == tree["data"]["output"]


def kiln_launch(folder: Path, tree: dict, scheduler: str, options: dict, *flags: str) -> tuple[str | None, str]:
    """Run `kiln launch SCHEDULER` on ``tree``: (the rendered text, "") or (None, the one-line error)."""
    config, target = folder / "config.yaml", folder / "rendered"
    config.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    target.unlink(missing_ok=True)
    argv = ["launch", scheduler, str(config), *(f"--{flag}={value}" for flag, value in options.items()), *flags]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "-o", str(target)])
    if code == 0:
        return target.read_text(encoding="utf-8"), ""
    message = err.getvalue()
    assert code == 2 and out.getvalue() == "", message
    assert message.startswith("kiln: error: ") and message.count("\n") == 1 and message.endswith("\n"), repr(message)
    assert "\r" not in message and "\x00" not in message, repr(message)
    return None, message


# --- the sandbox a rendered script runs in -----------------------------------------------------------------

SANDBOX = Path("/mnt")  # where the case folder is seen inside the script's mount namespace
STAND_INS = {
    "scontrol": """\
        printf '%s\\n' "$*" >> "$RECORD/scontrol"
        if [ "$1 $2" = "show hostnames" ]; then echo node-a; fi
        """,
    # Strips srun's options and runs the command once per node, each in a process group that a signal to
    # the step reaches, as in SLURM.
    "srun": """\
        printf '%s\\n' "$@" > "$RECORD/srun-$$"
        args=("$@"); i=0
        while [ $i -lt $# ]; do case "${args[$i]}" in -w) i=$((i + 2)) ;; -*) i=$((i + 1)) ;; *) break ;; esac; done
        set -m
        trap 'for p in $(jobs -p); do kill -TERM -- -$p 2>/dev/null; done; wait; exit 0' TERM
        SLURM_NODEID=0 "${args[@]:$i}" &
        wait
        """,
    "ray": """\
        if [ "$1" = status ]; then printf 'Active:\\n 1 node_a\\nPending:\\n'; exit 0; fi
        printf '%s\\n' "$@" > "$RECORD/ray-args"
        printf '%s %s\\n' "$RAY_AUTH_MODE" "$(stat -c %a "$RAY_AUTH_TOKEN_PATH")" > "$RECORD/ray-auth"
        trap 'exit 0' TERM
        while :; do sleep 0.05; done
        """,
    # Records its arguments, its config file and every file a job could have written by now.
    "kiln": """\
        printf '%s\\0' "$@" > "$RECORD/kiln-args"
        cp "$2" "$RECORD/kiln-config.yaml"
        find /tmp "$HOME" "$PWD" -mindepth 1 > "$RECORD/kiln-files"
        """,
}


def sandbox_case(folder: Path) -> Path:
    case = folder / "case"
    shutil.rmtree(case, ignore_errors=True)
    for sub in ("bin", "record", "home", "work"):
        (case / sub).mkdir(parents=True)
    for tool, body in STAND_INS.items():
        path = case / "bin" / tool
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return case


def run_in_sandbox(folder: Path, script: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run ``script`` as the batch shell of a one-node job: a mount namespace of its own, with an empty /tmp,
    and the case folder at /mnt. Returns the process and the folder of what the recorders saw."""
    case = sandbox_case(folder)
    (case / "job.sh").write_text(script, encoding="utf-8")
    inner = (
        f'mount --bind "$CASE" {SANDBOX} && mount -t tmpfs kiln-job /tmp && cd {SANDBOX}/work && '
        f"{{ bash {SANDBOX}/job.sh; status=$?; }}; "
        f'find /tmp {SANDBOX}/home {SANDBOX}/work -mindepth 1 > {SANDBOX}/record/left; exit "$status"'
    )
    env = {
        "PATH": f"{SANDBOX}/bin:{os.environ['PATH']}",
        "CASE": str(case),
        "HOME": f"{SANDBOX}/home",
        "RECORD": f"{SANDBOX}/record",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node-a",
    }
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", inner],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, case / "record"


@pytest.fixture(scope="module")
def sandbox_tools():
    missing = [tool for tool in ("unshare", "mount") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(f"the script sandbox needs root and {', '.join(missing) or 'unshare'} (tests run as root)")


def check_sbatch(script: str, tree: dict, values: dict, options: dict, folder: Path) -> None:
    syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    header = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]
    for flag in ("partition", "account", "qos", "time"):
        if flag in options:
            assert f"--{flag}={options[flag]}" in header

    proc, record = run_in_sandbox(folder, script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (record / "left").read_text() == "", "the job left files behind"
    args = (record / "kiln-args").read_text().split("\0")[:-1]
    job_folder = str(Path(args[1]).parent)
    assert job_folder.startswith("/tmp/kiln-")
    for written in (record / "kiln-files").read_text().splitlines():
        assert written == job_folder or written.startswith(job_folder + "/"), f"{written} is outside the job's folder"

    assert_carried(yaml.safe_load((record / "kiln-config.yaml").read_text()), tree, values)
    shape = ["train.nodes=1", "train.nproc=" + ("2" if options["gpus-per-node"] == "0" else options["gpus-per-node"])]
    if "through a Ray cluster" in script:
        assert args == ["run", args[1], f"cluster.address=127.0.0.1:{20000 + 4242 % 10000 * 2}", *shape]
        assert (record / "ray-auth").read_text().split() == ["token", "600"]
    else:
        assert args == ["train", args[1], *shape]


@PROPERTY
@given(values=config_values, options=slurm_options, ray=st.booleans())
def test_a_hostile_value_in_an_sbatch_render_is_an_error_or_travels_unchanged(tmp_path, sandbox_tools, values, options, ray):
    tree = config_tree(values)
    script, _ = kiln_launch(tmp_path, tree, "slurm", options, *(["--ray"] if ray else []))
    event("rendered" if script is not None else "refused")
    if script is not None:
        check_sbatch(script, tree, values, options, tmp_path)


@PROPERTY
@given(values=config_values, options=k8s_options)
@example(values={"data.output": "s3://bucket/\x85"}, options={"gpus-per-node": "0", "image": "registry.example:5000/kiln:1.0"})
def test_a_hostile_value_in_a_k8s_render_is_an_error_or_reads_back_unchanged(tmp_path, values, options):
    tree = config_tree(values)
    manifest, _ = kiln_launch(tmp_path, tree, "k8s", options)
    event("rendered" if manifest is not None else "refused")
    if manifest is None:
        return
    configmap, job = documents = list(yaml.safe_load_all(manifest))
    assert [d["kind"] for d in documents] == ["ConfigMap", "RayJob"]
    assert_carried(yaml.safe_load(configmap["data"]["config.yaml"]), tree, values)
    assert configmap["metadata"]["namespace"] == job["metadata"]["namespace"] == options.get("namespace", "default")
    cluster = job["spec"]["rayClusterSpec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    containers = [worker, *cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    assert {c["image"] for c in containers} == {options["image"]}
    assert worker["resources"]["limits"]["memory"] == options.get("memory-per-node", "64Gi")
    if "secret" in options:
        assert all(c["envFrom"] == [{"secretRef": {"name": options["secret"]}}] for c in containers)


PWNED = "x'\ntouch /tmp/PWNED  # "


@pytest.mark.parametrize("ray", [False, True])
def test_a_command_in_the_run_name_is_refused_and_elsewhere_stays_text(tmp_path, sandbox_tools, ray):
    flags = ["--ray"] if ray else []
    script, error = kiln_launch(tmp_path, config_tree({"run.name": PWNED}), "slurm", {"gpus-per-node": "0"}, *flags)
    assert script is None and "run.name" in error and "is not a run name" in error

    values = {"data.text_field": PWNED, "data.inputs": [PWNED], "cluster.address": PWNED}
    tree = config_tree(values)
    script, _ = kiln_launch(tmp_path, tree, "slurm", {"gpus-per-node": "0"}, *flags)
    check_sbatch(script, tree, values, {"gpus-per-node": "0"}, tmp_path)  # nothing outside the job folder: no /tmp/PWNED


def test_a_newline_in_the_run_name_cannot_add_a_document_to_the_manifest(tmp_path):
    pod = (
        "x\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        + "spec: {containers: [{name: c, securityContext: {privileged: true}}]}"
    )
    manifest, error = kiln_launch(tmp_path, config_tree({"run.name": pod}), "k8s", {"gpus-per-node": "8", "image": "kiln:1"})
    assert manifest is None and "run.name" in error
    manifest, _ = kiln_launch(
        tmp_path, config_tree({"data.text_field": pod}), "k8s", {"gpus-per-node": "8", "image": "kiln:1"}
    )
    assert [d["kind"] for d in yaml.safe_load_all(manifest)] == ["ConfigMap", "RayJob"]
