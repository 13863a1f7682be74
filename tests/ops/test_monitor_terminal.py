"""`kiln monitor` in a real terminal (tmux) over a real 2-rank training: the screen follows the steps, a
stopped rank turns unresponsive while its peer shows waiting for it (on screen and in `kiln status
--json`), both recover when it resumes, and Ctrl-C gives the terminal back clean."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from ops.records import RunRecords

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 120, 60
DEADLINE_S = 180
START_DEADLINE_S = 900  # a first run may JIT-build DeepSpeed's CPU ops


def kiln(*args, cwd):
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


class Terminal:
    """A tmux server of its own (a socket in the test's folder) running one command in a WIDTH × HEIGHT pane."""

    def __init__(self, cwd, *command):
        self.socket = str(cwd / f"tmux-{uuid.uuid4().hex[:8]}.sock")
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        subprocess.run(
            [
                "tmux",
                "-S",
                self.socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                str(WIDTH),
                "-y",
                str(HEIGHT),
                "-c",
                str(cwd),
                *command,
            ],
            check=True,
            env=env,
        )

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, what, check):
        """Poll the screen until ``check(screen)`` holds; returns its value."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            screen = self.screen()
            found = check(screen)
            if found:
                return found
            assert time.monotonic() < deadline, f"never saw {what} on screen:\n{screen}"
            time.sleep(0.3)

    def close(self):
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)
        if os.path.exists(self.socket):
            os.remove(self.socket)


def shown_step(screen: str) -> int | None:
    match = re.search(r"step\s+(\d+) / \d+", screen)
    return int(match.group(1)) if match else None


def rank_state(screen: str, rank: int, host: str) -> str | None:
    for line in screen.splitlines():
        match = re.match(rf"^\W*{rank}\s+{re.escape(host)}\s.*?\b(ok|waiting|unresponsive|dead|exited)\b", line)
        if match:
            return match.group(1)
    return None


@pytest.fixture(scope="module")
def training(tmp_path_factory, tiny_config, prepared_data):
    """A 2-rank training far from its end, beating every half second; stopped (and reaped) afterwards."""
    tmp = tmp_path_factory.mktemp("monitor")
    path = tiny_config(tmp, seed=11, train={"steps": 100_000, "checkpoint_every": 100_000, "heartbeat_s": 0.5})
    prepared_data(path)
    log = tmp / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "train", str(path)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    proc.log = log
    records = RunRecords(str(tmp / "run"))
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while not (records.metrics() and len(records.heartbeats()) == 2):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.3)
        yield tmp, proc, {b["rank"]: b for b in records.heartbeats()}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher, torchrun and the ranks
        except ProcessLookupError:
            pass
        proc.wait()


def test_monitor_follows_training_and_tells_the_stopped_rank_from_the_one_waiting_for_it(training):
    tmp, proc, beats = training
    run = str(tmp / "run")
    host = beats[0]["host"]
    monitor = [
        "bash",
        "--norc",
        "--noprofile",
        "-c",
        f"{sys.executable} -m launch.cli monitor {run} --interval 0.5; echo monitor-exit=$?; sleep 600",
    ]
    terminal = Terminal(tmp, *monitor)
    try:
        first = terminal.wait_for("a step", shown_step)
        terminal.wait_for("the step advancing", lambda s: (shown_step(s) or 0) > first)
        terminal.wait_for("both ranks ok", lambda s: rank_state(s, 0, host) == rank_state(s, 1, host) == "ok")

        os.kill(beats[1]["pid"], signal.SIGSTOP)
        try:
            terminal.wait_for(
                "rank 1 unresponsive and rank 0 waiting",
                lambda s: rank_state(s, 1, host) == "unresponsive" and rank_state(s, 0, host) == "waiting",
            )
            status = kiln("status", run, "--json", cwd=tmp)
            assert status.returncode == 3, status.stderr  # degraded: a rank unresponsive, none dead
            ranks = {r["rank"]: r for r in json.loads(status.stdout)["ranks"]}
            assert ranks[1]["state"] == "unresponsive" and ranks[0]["state"] == "waiting"
            assert json.loads(status.stdout)["state"] == "stalled"
        finally:
            os.kill(beats[1]["pid"], signal.SIGCONT)
        resumed = terminal.wait_for("a step after the resume", shown_step)
        terminal.wait_for(
            "both ranks ok again",
            lambda s: rank_state(s, 0, host) == rank_state(s, 1, host) == "ok" and (shown_step(s) or 0) > resumed,
        )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 75, proc.log.read_text()[-2000:]
        terminal.wait_for("the preemption", lambda s: "preempted" in s and "exit 75 asks to be requeued" in s)

        terminal.tmux("send-keys", "-t", "t", "C-c")
        screen = terminal.wait_for("the monitor ending", lambda s: "monitor-exit=" in s and s)
        assert "monitor-exit=0" in screen and "ranks" not in screen  # the dashboard left with the alternate screen
        assert terminal.tmux("display-message", "-p", "-t", "t", "#{alternate_on} #{cursor_flag}").split() == ["0", "1"]
    finally:
        terminal.close()
