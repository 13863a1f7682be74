"""The sbatch renderer: what the script asks SLURM for, where its ranks meet, and what it refuses.

The rendezvous test runs the rendered script under bash with stand-ins for srun, scontrol and kiln on
PATH: it proves which address, port and node rank each node's `kiln train` receives, and that it reads
exactly the config that was rendered, without a multi-node cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from launch.config import ConfigError, KilnConfig, load_config
from launch.render import SlurmOptions, render_sbatch
from launch.render.job_config import job_name
from launch.render.options import validated


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "Big_Run", "dir": "s3://bucket/runs/big"},
                "data": {"inputs": ["s3://bucket/raw/*.jsonl.gz"], "output": "s3://bucket/data/big"},
                "train": {"nproc": 2, "launcher": "local", "micro_batch": 1, "global_batch": 256},
            }
        )
    )
    return path


def sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def stand_in(folder, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
    path.chmod(0o755)


def run_with_stand_ins(tmp_path, script: str, first_node_address: str, nodes: int = 2) -> subprocess.CompletedProcess:
    """Run ``script`` as SLURM would start it on the first of ``nodes`` nodes; srun runs each node's task here.

    The stand-in kiln records its arguments, the rendezvous variables and the config file it was given.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in(
        bin_dir,
        "scontrol",
        """\
        if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a\\ngpu-b\\ngpu-c\\ngpu-d\\n' | head -n "$SLURM_JOB_NUM_NODES"; fi
        """,
    )
    stand_in(
        bin_dir,
        "srun",
        f"""\
        if [ "${{@: -2:1}}" = hostname ]; then echo "{first_node_address} fd00::7"; exit 0; fi
        for node in $(seq 0 $(( SLURM_JOB_NUM_NODES - 1 ))); do SLURM_NODEID=$node bash -c "${{@: -1}}" || exit $?; done
        """,
    )
    stand_in(
        bin_dir,
        "kiln",
        """\
        out="$RECORD/node-$NODE_RANK"
        mkdir -p "$out"
        printf '%s\\n' "$@" > "$out/args"
        printf 'MASTER_ADDR=%s\\nMASTER_PORT=%s\\n' "$MASTER_ADDR" "$MASTER_PORT" > "$out/env"
        cp "$2" "$out/config.yaml"
        """,
    )
    (tmp_path / "record").mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(tmp_path / "record"),
        "TMPDIR": str(tmp_path),
        "SLURM_JOB_ID": "123457",
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_JOB_NODELIST": "gpu-[a-d]",
    }
    job = tmp_path / "job.sh"
    job.write_text(script)
    return subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=60)


def test_a_multi_node_job_meets_at_the_first_nodes_own_address_never_localhost(tmp_path, config):
    cfg = load_config(str(config))
    script = render_sbatch(cfg, SlurmOptions(nodes=2, gpus_per_node=4))
    proc = run_with_stand_ins(tmp_path, script, first_node_address="10.20.0.11")
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        record = tmp_path / "record" / f"node-{rank}"
        env = dict(line.split("=", 1) for line in (record / "env").read_text().split())
        assert env["MASTER_ADDR"] == "10.20.0.11"
        assert env["MASTER_PORT"] == str(20000 + 123457 % 20000)
        args = (record / "args").read_text().split()
        assert args[0] == "train" and "train.nodes=2" in args and "train.nproc=4" in args
        shipped = yaml.safe_load((record / "config.yaml").read_text())
        assert shipped["train"]["launcher"] == "local" and shipped["train"]["nodes"] == 2
        assert shipped["run"]["dir"] == cfg.run_url and shipped["model"] == cfg.model.model_dump(mode="json")


def test_a_multi_node_job_refuses_a_loopback_address_for_the_first_node(tmp_path, config):
    script = render_sbatch(load_config(str(config)), SlurmOptions(nodes=2, gpus_per_node=4))
    proc = run_with_stand_ins(tmp_path, script, first_node_address="127.0.1.1")
    assert proc.returncode == 1
    assert "no routable address for gpu-a" in proc.stderr
    assert not list((tmp_path / "record").iterdir()), "no rank may start"


def test_the_ray_variant_joins_every_node_to_the_head_with_the_jobs_token_in_private_files(tmp_path, config):
    """Stand-ins for srun (strips its options, runs the command once per node), ray (records, then blocks
    until stopped) and kiln: the workers join the first node's address with the head's token, which
    reaches them in a file only their user can read and is never printed."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    stand_in(
        bin_dir,
        "scontrol",
        """\
        if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a\\ngpu-b\\n'; fi
        """,
    )
    stand_in(
        bin_dir,
        "srun",
        """\
        args=("$@"); i=0; nodes=1; first=0
        for a in "$@"; do case "$a" in --nodes=*) nodes=${a#--nodes=} ;; --exclude=*) first=1 ;; esac; done
        while [ $i -lt $# ]; do case "${args[$i]}" in -w) i=$((i + 2)) ;; -*) i=$((i + 1)) ;; *) break ;; esac; done
        if [ "${args[$i]}" = hostname ]; then echo "10.20.0.11 fd00::7"; exit 0; fi
        set -m  # each task in its own process group: a signal to the step reaches every process in it, as in SLURM
        trap 'for p in $(jobs -p); do kill -TERM -- -$p 2>/dev/null; done; wait; exit 0' TERM
        for n in $(seq $first $((first + nodes - 1))); do SLURM_NODEID=$n "${args[@]:$i}" & done
        wait
        """,
    )
    stand_in(
        bin_dir,
        "ray",
        """\
        if [ "$1" = status ]; then
          printf 'Active:\\n'
          for f in "$RECORD"/head-args "$RECORD"/worker-args; do [ -e "$f" ] && printf ' 1 node_x\\n'; done
          printf 'Pending:\\n'
          exit 0
        fi
        role=worker; [ "$2" = --head ] && role=head
        stat -c %a "$RAY_AUTH_TOKEN_PATH" > "$RECORD/$role-token-mode"
        cp "$RAY_AUTH_TOKEN_PATH" "$RECORD/$role-token"
        echo "${RAY_AUTH_MODE:-unset} ${KILN_RAY_TOKEN:-unset}" > "$RECORD/$role-env"
        printf '%s\\n' "$@" > "$RECORD/$role-args"
        trap 'exit 0' TERM
        while :; do sleep 0.1; done
        """,
    )
    stand_in(
        bin_dir,
        "kiln",
        """\
        printf '%s\\n' "$@" > "$RECORD/kiln-args"
        cp "$RAY_AUTH_TOKEN_PATH" "$RECORD/kiln-token"
        """,
    )
    job = tmp_path / "job.sh"
    job.write_text(render_sbatch(load_config(str(config)), SlurmOptions(nodes=2, gpus_per_node=4, ray=True)))
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "SLURM_JOB_ID": "123458",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
    }
    ray_folders = set(Path("/tmp").glob("kiln-slurm-*"))
    proc = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    head = (record / "head-args").read_text().split()
    port = 20000 + 123458 % 10000 * 2
    assert "--node-ip-address=10.20.0.11" in head and f"--port={port}" in head
    assert f"--address=10.20.0.11:{port}" in (record / "worker-args").read_text().split()
    token = (record / "head-token").read_text()
    assert len(token) == 64 and (record / "worker-token").read_text() == token == (record / "kiln-token").read_text()
    assert (record / "head-token-mode").read_text().strip() == (record / "worker-token-mode").read_text().strip() == "600"
    assert (record / "worker-env").read_text().split() == ["token", "unset"]
    assert token not in proc.stdout + proc.stderr
    kiln_args = (record / "kiln-args").read_text().split()
    assert kiln_args[0] == "run" and f"cluster.address=10.20.0.11:{port}" in kiln_args and "train.nodes=2" in kiln_args
    assert set(Path("/tmp").glob("kiln-slurm-*")) == ray_folders, "the token and Ray's folders outlive the job"


def test_the_script_asks_for_whole_nodes_logs_per_job_requeue_and_an_early_signal(config):
    script = render_sbatch(
        load_config(str(config)),
        SlurmOptions(nodes=4, gpus_per_node=8, time="2-00:00:00", partition="gpu", account="llm", qos="high"),
    )
    lines = sbatch_lines(script)
    for expected in (
        "--job-name=kiln-big-run",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--time=2-00:00:00",
        "--partition=gpu",
        "--account=llm",
        "--qos=high",
        "--output=%x-%j.out",
        "--open-mode=append",
        "--requeue",
        "--signal=B:USR2@120",
    ):
        assert expected in lines
    assert "trap forward_preemption USR2" in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert 'srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1' in script


def test_the_preemption_signal_and_its_lead_time_are_configurable(config):
    script = render_sbatch(load_config(str(config)), SlurmOptions(gpus_per_node=8, signal="USR1", signal_lead=300))
    assert "--signal=B:USR1@300" in sbatch_lines(script)
    assert "trap forward_preemption USR1" in script


def test_a_cpu_job_asks_for_no_gpus_and_runs_the_configs_ranks_per_node(config):
    script = render_sbatch(load_config(str(config)), SlurmOptions(nodes=1, gpus_per_node=0))
    assert not [line for line in sbatch_lines(script) if "gpu" in line]
    assert 'train.nproc="2"' in script


def test_the_ray_variant_runs_kiln_run_on_a_token_authenticated_cluster_it_stops(config):
    script = render_sbatch(load_config(str(config)), SlurmOptions(nodes=2, gpus_per_node=8, ray=True))
    assert "export RAY_AUTH_MODE=token" in script and "RAY_AUTH_TOKEN_PATH=" in script
    assert "(umask 077 &&" in script
    assert "ray start --head --block" in script and 'ray start --address="$KILN_RAY_ADDRESS"' in script
    assert 'kiln run "$workdir/config.yaml"' in script
    assert script.index("stop_ray\ncleanup\nrequeue_if_preempted") > script.index("kiln run")
    assert (
        "train.launcher=ray" not in script
        and yaml.safe_load(script.split("<<'KILN_CONFIG_END'\n")[1].split("KILN_CONFIG_END")[0])["train"]["launcher"] == "ray"
    )


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"nodes": 0, "gpus_per_node": 8}, "--nodes: must be at least 1 (got 0)"),
        ({"gpus_per_node": -1}, "--gpus-per-node: must be at least 0 (got -1)"),
        ({}, "--gpus-per-node is required"),
        ({"gpus_per_node": 8, "time": "1:2:3:4"}, "--time: '1:2:3:4' is not a SLURM time limit"),
        ({"gpus_per_node": 8, "time": "two days"}, "--time: 'two days' is not a SLURM time limit"),
        ({"gpus_per_node": 8, "partition": "gpu;rm"}, "--partition: 'gpu;rm' is not a SLURM name"),
        ({"gpus_per_node": 8, "signal": "KILL"}, "--signal: input should be 'USR1', 'USR2' or 'TERM'"),
        ({"gpus_per_node": 8, "signal_lead": 0}, "--signal-lead: must be at least 1"),
    ],
)
def test_bad_launch_options_are_one_line_naming_the_flag(values, fragment):
    with pytest.raises(ConfigError) as error:
        validated(SlurmOptions, **values)
    assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("time", ["90", "30:00", "12:00:00", "2-0", "2-12:30", "7-00:00:00", "UNLIMITED", "0"])
def test_every_slurm_time_format_is_accepted(time):
    assert validated(SlurmOptions, gpus_per_node=1, time=time).time == time


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_prints_the_script_or_writes_it_executable(tmp_path, config, capsys):
    code, printed, _ = run_cli(capsys, "launch", "slurm", str(config), "--nodes", "2", "--gpus-per-node", "8")
    assert code == 0 and printed.startswith("#!/bin/bash")
    target = tmp_path / "job.sbatch"
    code, out, _ = run_cli(capsys, "launch", "slurm", str(config), "--nodes", "2", "--gpus-per-node", "8", "-o", str(target))
    assert code == 0 and out == ""
    assert target.read_text() == printed and os.access(target, os.X_OK)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--nodes", "0", "--gpus-per-node", "8"], "--nodes: must be at least 1"),
        (["--gpus-per-node", "-2"], "--gpus-per-node: must be at least 0"),
        (["--gpus-per-node", "8", "--time", "1 day"], "--time: '1 day' is not a SLURM time limit"),
        (["--gpus-per-node", "8", "-o", "missing/job.sbatch"], "-o missing/job.sbatch: folder missing does not exist"),
        (["--gpus-per-node", "8", "train.stpes=5"], "did you mean 'train.steps'"),
        (["--nodes", "3", "--gpus-per-node", "8", "train.global_batch=32"], "3 node(s) x 8 rank(s): train.global_batch=32"),
    ],
)
def test_bad_input_to_kiln_launch_slurm_is_one_line(tmp_path, config, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "launch", "slurm", str(config), *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kiln: error: ") and fragment in err


def test_submit_without_sbatch_is_one_line(tmp_path, config, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = run_cli(capsys, "launch", "slurm", str(config), "--gpus-per-node", "8", "--submit")
    assert code == 2 and err.count("\n") == 1 and "sbatch not found on PATH" in err


@pytest.mark.parametrize("run_name, job", [("Big_Run", "kiln-big-run"), ("kiln-7b", "kiln-7b"), ("__", "kiln-run")])
def test_the_job_is_named_after_the_run_once(run_name, job):
    assert job_name(KilnConfig.model_validate({"run": {"name": run_name}, "data": {}})) == job


def test_the_preemption_signal_reaches_kiln_through_its_own_job_folder_only(tmp_path, config):
    """USR2 to the batch shell reaches the `kiln train` whose pid sits in the folder mktemp made for the node
    step, which then exits 75 and the job requeues itself; a folder of the same prefix that another user made
    first names a pid that is left alone."""
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    stand_in(bin_dir, "scontrol", 'printf \'%s\\n\' "$*" >> "$RECORD/scontrol"; [ "$1" = show ] && echo node-a; exit 0\n')
    stand_in(bin_dir, "srun", 'SLURM_NODEID=0 bash -c "${@: -1}"\n')
    stand_in(
        bin_dir,
        "kiln",
        """\
        trap 'echo USR2 > "$RECORD/kiln-signal"; exit 75' USR2
        dirname "$2" > "$RECORD/kiln-folder"
        while :; do sleep 0.05; done
        """,
    )
    bystander = subprocess.Popen(["sleep", "300"])
    decoy = tmp_path / "kiln-123459-0.AAAAAAAA"  # the job's prefix, made first by someone else
    decoy.mkdir()
    (decoy / "kiln.pid").write_text(f"{bystander.pid}\n")
    os.chown(decoy, 65534, 65534)
    job = tmp_path / "job.sh"
    job.write_text(render_sbatch(load_config(str(config)), SlurmOptions(nodes=1, gpus_per_node=0)))
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "TMPDIR": str(tmp_path),
        "SLURM_JOB_ID": "123459",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_JOB_NODELIST": "node-a",
    }
    batch = subprocess.Popen(["bash", str(job)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (record / "kiln-folder").exists() and list(Path((record / "kiln-folder").read_text().strip()).glob("kiln.pid")):
                break
            time.sleep(0.1)
        folder = Path((record / "kiln-folder").read_text().strip())
        assert folder.parent == tmp_path and folder.name.startswith("kiln-123459-0.") and folder != decoy
        assert folder.stat().st_mode & 0o777 == 0o700
        batch.send_signal(signal.SIGUSR2)
        out, err = batch.communicate(timeout=60)
    finally:
        batch.kill()
        bystander.kill()
        bystander.wait()
    assert batch.returncode == 75, err
    assert (record / "kiln-signal").read_text().strip() == "USR2"
    assert "requeue 123459" in (record / "scontrol").read_text()
    assert bystander.returncode == -signal.SIGKILL, "the pid in another user's folder was signalled"
    assert not folder.exists(), "the node step's folder outlives it"
