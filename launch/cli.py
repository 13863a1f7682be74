"""The ``kiln`` command line.

Every command that takes a CONFIG also takes dotted overrides (``train.steps=50``).
User errors end with one line on stderr and exit code 2, never a traceback.
Heavy imports (torch, DeepSpeed, Ray) happen inside the commands, so ``kiln --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

EXIT_USER_ERROR = 2


def _config(args: argparse.Namespace):
    from launch.config import load_config

    return load_config(args.config, args.overrides)


def cmd_prepare(args) -> int:
    from launch.stages import prepare_stage

    prepare_stage(_config(args))
    return 0


def cmd_train(args) -> int:
    from launch.stages import train_stage

    return train_stage(_config(args))


def _eval_config(args: argparse.Namespace):
    """The config file given, or, given a RUN_URL, the run its saved config describes (as data only:
    where to connect and what to run stay the user's)."""
    import os

    from launch.config import SAVED_CONFIG, load_config, load_run_config
    from ops import storage

    if not os.path.isfile(args.config) and storage.exists(storage.join(args.config, SAVED_CONFIG)):
        return load_run_config(args.config, args.overrides)
    return load_config(args.config, args.overrides)


def cmd_eval(args) -> int:
    from launch.stages import eval_stage

    eval_stage(_eval_config(args), follow=args.follow)
    return 0


def cmd_eval_make_cloze(args) -> int:
    from cluster.evals.cloze import write_cloze

    count = write_cloze(
        args.data_url, args.out, args.n, args.context_tokens, args.continuation_tokens, args.choices, args.seed
    )
    print(f"wrote {count} cloze examples to {args.out}")
    return 0


def cmd_run(args) -> int:
    from launch.stages import run_stages

    return run_stages(_config(args))


def _address(args) -> str:
    import os

    from launch.config import ConfigError

    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not address:
        raise ConfigError("--address is required: the Ray dashboard URL, e.g. http://HEAD:8265")
    return address


def _follow(jobs, job_id: str) -> int:
    from cluster.submit import exit_code

    try:
        info = jobs.follow(job_id)
    except KeyboardInterrupt:
        print(
            f"kiln: detached; job {job_id} keeps running. Reattach with: "
            f"kiln jobs logs {job_id} --address {jobs.address} --follow",
            file=sys.stderr,
        )
        return 130
    print(f"kiln: job {job_id} {info.status.value.lower()}", file=sys.stderr)
    return exit_code(info)


def cmd_submit(args) -> int:
    from launch.ray_job_staging import submit

    from cluster.auth import insecure_token_allowed

    jobs, job_id = submit(_config(args), _address(args), insecure_token_allowed(args.allow_insecure_token))
    print(job_id)
    print(
        f"kiln: submitted {job_id} to {jobs.address}; follow it with: "
        f"kiln jobs logs {job_id} --address {jobs.address} --follow",
        file=sys.stderr,
    )
    return _follow(jobs, job_id) if args.follow else 0


def cmd_jobs(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from cluster.auth import insecure_token_allowed
    from cluster.submit import Jobs

    jobs = Jobs.connect(_address(args), insecure_token_allowed(args.allow_insecure_token))
    if args.jobs_command == "list":
        table = Table(title=f"jobs · {jobs.address}")
        for col in ("job id", "status", "run", "entrypoint"):
            table.add_column(col)
        for info in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
            table.add_row(
                info.submission_id or info.job_id or "—",
                info.status.value,
                (info.metadata or {}).get("kiln.run", "—"),
                info.entrypoint,
            )
        Console().print(table)
        return 0
    if not args.job_id:
        from launch.config import ConfigError

        raise ConfigError(f"kiln jobs {args.jobs_command} needs a JOB_ID (see `kiln jobs list --address {jobs.address}`)")
    if args.jobs_command == "status":
        info = jobs.details(args.job_id)
        print(f"{args.job_id}: {info.status.value}" + (f" — {info.message}" if info.message else ""))
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            return _follow(jobs, args.job_id)
        sys.stdout.write(jobs.logs(args.job_id))
        return 0
    stopped = jobs.stop(args.job_id)
    print(f"{args.job_id}: {'stop requested: its ranks save, then it ends' if stopped else 'not running'}")
    return 0


def cmd_monitor(args) -> int:
    from ops.dashboard import monitor

    monitor(args.run_url, once=args.once, interval_s=args.interval)
    return 0


def cmd_status(args) -> int:
    from rich.console import Console

    from ops.dashboard import render_summary
    from ops.status import run_status, status_exit_code

    status = run_status(args.run_url)
    if args.json:
        print(status.model_dump_json(indent=2))
    else:
        console = Console()
        console.print(render_summary(status, console.width))
    return status_exit_code(status)


def cmd_metrics(args) -> int:
    from ops.metrics_table import print_metrics

    try:
        print_metrics(args.run_url, fmt=args.format, follow=args.follow, interval_s=args.interval)
    except BrokenPipeError:  # `kiln metrics RUN | head`: the reader has what it wanted
        sys.stderr.close()
    return 0


def cmd_compare(args) -> int:
    from rich.console import Console

    from ops.compare import load_runs, terminal_charts, write_png

    runs = load_runs(args.run_urls)
    console = Console()
    console.print(terminal_charts(runs, console.width))
    if args.output:
        write_png(runs, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def cmd_data_inspect(args) -> int:
    from rich.console import Console

    from data_shards.inspect import inspect

    Console().print(inspect(args.data_url))
    return 0


def cmd_ckpt_ls(args) -> int:
    from ops.checkpoints import list_checkpoints, print_checkpoints

    print_checkpoints(list_checkpoints(args.run_url))
    return 0


def cmd_ckpt_verify(args) -> int:
    from llm.devices import use_cpu_accelerator_without_cuda

    use_cpu_accelerator_without_cuda()
    from launch.checkpoint_tools import print_verify

    return print_verify(args.run_url)


def cmd_ckpt_prune(args) -> int:
    from launch.checkpoint_tools import print_prune

    return print_prune(args.run_url, args.keep)


def cmd_export_hf(args) -> int:
    from llm.devices import use_cpu_accelerator_without_cuda

    use_cpu_accelerator_without_cuda()
    from llm.export_hf import export_hf

    export_hf(args.run_url, args.out_dir, step=args.step)
    print(f"exported {args.run_url} to {args.out_dir}")
    return 0


def cmd_generate(args) -> int:
    from llm.devices import use_cpu_accelerator_without_cuda

    use_cpu_accelerator_without_cuda()
    from llm.generate import generate

    from rich.console import Console
    from rich.text import Text

    continuation = generate(
        args.run_url, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed
    )
    Console(highlight=False).print(Text(args.prompt, style="bold") + Text(continuation))
    return 0


def cmd_plan(args) -> int:
    from launch.plan_command import print_plan

    print_plan(_config(args), gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, gpus_per_node=args.gpus_per_node)
    return 0


def cmd_launch_slurm(args) -> int:
    from launch.scheduler_jobs import launch_slurm
    from launch.render.options import SlurmOptions, validated

    options = validated(
        SlurmOptions,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        partition=args.partition,
        time=args.time,
        account=args.account,
        qos=args.qos,
        signal=args.signal,
        signal_lead=args.signal_lead,
        ray=args.ray,
    )
    launch_slurm(_config(args), options, args.output, args.submit)
    return 0


def cmd_launch_k8s(args) -> int:
    from launch.scheduler_jobs import launch_k8s
    from launch.render.options import KubernetesOptions, validated

    options = validated(
        KubernetesOptions,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        image=args.image,
        namespace=args.namespace,
        secret=args.secret,
        cpus_per_node=args.cpus_per_node,
        memory_per_node=args.memory_per_node,
    )
    launch_k8s(_config(args), options, args.output)
    return 0


def _with_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="dotted overrides, e.g. train.steps=50")


def _with_job_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node, one rank each; 0: CPU ranks, train.nproc per node")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of printing")


def _with_insecure_token(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-insecure-token",
        action="store_true",
        help="send the Ray token over plain http to another machine (default: only https or a loopback "
        "address such as an SSH tunnel; KILN_ALLOW_INSECURE_TOKEN=1 also allows it)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Pretrain Llama-style language models: prepare → train → eval → monitor."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_text: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=fn)
        return p

    _with_config(add("prepare", cmd_prepare, "train the tokenizer and write token shards + manifests"))
    _with_config(add("train", cmd_train, "pretrain with DeepSpeed ranks, resuming from the latest checkpoint"))
    p = add("eval", cmd_eval, "evaluate checkpoints on the held-out split and the eval.tasks")
    _with_config(p)
    p.add_argument(
        "--follow",
        action="store_true",
        help="keep watching the run: evaluate each newly committed checkpoint until the run finishes",
    )
    p.epilog = (
        "CONFIG may also be a RUN_URL: its saved config.yaml gives the model, data and eval.* "
        "(cluster.*, storage.* and train.* come from overrides, RAY_ADDRESS and defaults, never from the run folder).  "
        "kiln eval make-cloze DATA_URL OUT.jsonl [--n N] builds a cloze task from held-out documents."
    )
    _with_config(add("run", cmd_run, "prepare → train → eval, skipping stages whose output is committed"))

    p = add("submit", cmd_submit, "submit `kiln run` of a config to a Ray cluster through its Jobs API")
    _with_config(p)
    p.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="stream the job's logs and exit with its outcome")
    _with_insecure_token(p)

    p = add("jobs", cmd_jobs, "list, inspect, follow and stop jobs on a Ray cluster")
    p.add_argument("jobs_command", choices=["list", "status", "logs", "stop"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    _with_insecure_token(p)

    p = add("monitor", cmd_monitor, "live dashboard over a run's records")
    p.add_argument("run_url")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")

    p = add(
        "status",
        cmd_status,
        "one summary of a run's records; exit 0 healthy or finished, 1 failed or a rank "
        "dead, 3 stalled or a rank unresponsive",
    )
    p.add_argument("run_url")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema: ops.status.RunStatus)")

    p = add("metrics", cmd_metrics, "the run's metrics table (every writer, restarts resolved) as CSV or JSON lines")
    p.add_argument("run_url")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--follow", action="store_true", help="then print each new step as it is logged, until the run ends")
    p.add_argument("--interval", type=float, default=2.0, help="--follow: seconds between reads")

    p = add("compare", cmd_compare, "loss, learning-rate and held-out curves of several runs on shared axes")
    p.add_argument("run_urls", nargs="+", metavar="RUN_URL")
    p.add_argument("-o", "--output", metavar="PNG", help="also write the charts to this PNG (a path or URL)")

    data = add("data", None, "inspect prepared data").add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = add("inspect", cmd_data_inspect, "manifest summary, per-source counts and decoded samples", parent=data)
    p.add_argument("data_url")

    ckpt = add("ckpt", None, "checkpoint tools").add_subparsers(dest="ckpt_command", required=True, metavar="SUBCOMMAND")
    p = add("ls", cmd_ckpt_ls, "list checkpoints and whether each is committed", parent=ckpt)
    p.add_argument("run_url")
    p = add("verify", cmd_ckpt_verify, "check that latest is committed and its weights load", parent=ckpt)
    p.add_argument("run_url")
    p = add("prune", cmd_ckpt_prune, "delete all but the newest K committed checkpoints", parent=ckpt)
    p.add_argument("run_url")
    p.add_argument("--keep", type=int, default=1, help="committed checkpoints to keep (at least 1)")

    export = add("export", None, "export a checkpoint").add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    p = add("hf", cmd_export_hf, "a Hugging Face Llama checkpoint (config.json, safetensors, tokenizer)", parent=export)
    p.add_argument("run_url")
    p.add_argument("out_dir")
    p.add_argument("--step", type=int, default=None)

    p = add("generate", cmd_generate, "sample text from a checkpoint")
    p.add_argument("run_url")
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)

    launch = add("launch", None, "render a cluster job for this config").add_subparsers(
        dest="launch_command", required=True, metavar="SCHEDULER"
    )
    p = add("slurm", cmd_launch_slurm, "an sbatch script: one task per node, requeued when preempted", parent=launch)
    _with_config(p)
    _with_job_shape(p)
    p.add_argument("--partition")
    p.add_argument("--time", help="time limit in SLURM's formats (minutes, HH:MM:SS, D-HH:MM, ...)")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--signal", help="preemption signal sent to the batch shell (default USR2; NCCL may use USR1)")
    p.add_argument("--signal-lead", type=int, metavar="SECONDS", help="seconds before the time limit (default 120)")
    p.add_argument("--ray", action="store_true", help="start a token-authenticated Ray cluster and `kiln run` on it")
    p.add_argument("--submit", action="store_true", help="submit with sbatch and print the job id")
    p = add("k8s", cmd_launch_k8s, "a KubeRay RayJob plus the ConfigMap with the resolved config", parent=launch)
    _with_config(p)
    _with_job_shape(p)
    p.add_argument("--image", help="container image with Kiln installed (see Dockerfile)")
    p.add_argument("--namespace")
    p.add_argument("--secret", help="Secret whose keys become the pods' environment (e.g. AWS credentials)")
    p.add_argument("--cpus-per-node", type=int, help="CPUs of each worker pod (default 8)")
    p.add_argument("--memory-per-node", help="memory of each worker pod (default 64Gi)")

    p = add("plan", cmd_plan, "parameters, memory per GPU and time to train.steps")
    _with_config(p)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", choices=["a100", "h100", "h200"], default="h100")
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node, for the object-store traffic of the data")
    return parser


def build_make_cloze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kiln eval make-cloze", description="a multiple-choice cloze task (JSONL) from a prepared dataset's val documents"
    )
    p.set_defaults(func=cmd_eval_make_cloze)
    p.add_argument("data_url", help="prepared data (DATA_URL)")
    p.add_argument("out", help="task file to write (local path or URL)")
    p.add_argument("--n", type=int, default=200, help="examples")
    p.add_argument("--context-tokens", type=int, default=48)
    p.add_argument("--continuation-tokens", type=int, default=8, help="length of every choice, in tokens")
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for the user as is (missing files and URLs included)."""
    from cluster.submit import JobsError
    from data_shards.errors import DataError
    from launch.config import ConfigError

    return (ConfigError, DataError, FileNotFoundError, JobsError)


KILN_PACKAGES = {"launch", "cluster", "llm", "data_shards", "ops"}


def missing_dependency(error: ModuleNotFoundError) -> str:
    """One line for a Python without Kiln's dependencies, e.g. the one a Ray cluster started outside Kiln's
    environment runs a submitted job with."""
    package = (error.name or "").split(".")[0]
    return (
        f"{sys.executable} cannot import {package!r}, one of Kiln's dependencies: run Kiln with the Python it "
        f"is installed in, or install it into this one (`{sys.executable} -m pip install kiln-pretrain`); on a Ray "
        "cluster, start Ray from Kiln's environment"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; dotted overrides may also follow the options (argparse alone cannot take
    positionals after them)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["eval", "make-cloze"]:  # a subcommand of eval, whose first argument is otherwise a CONFIG
        args = build_make_cloze_parser().parse_args(argv[2:])
    else:
        args = parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in KILN_PACKAGES:
            raise
        print(f"kiln: error: {missing_dependency(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # narrowed below: user_errors() imports their types only now; the rest is raised on
        try:
            expected = user_errors()
        except ModuleNotFoundError as missing:  # a Python without Kiln's dependencies: the error to fix first
            print(f"kiln: error: {missing_dependency(missing)}", file=sys.stderr)
            return EXIT_USER_ERROR
        if isinstance(e, expected):
            print(f"kiln: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
