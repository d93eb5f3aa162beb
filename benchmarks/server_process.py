"""A benchmark's server subprocess: started in its own process group, ready when a URL answers 200,
stopped with everything it started (Ray's daemons included), so the next server has the cores."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

STARTUP_TIMEOUT_S = 600.0  # Ray start + model load on a busy 2-core machine

console = Console(stderr=True)


def say(text: str) -> None:
    """One progress line on stderr, printed as is (no rich markup: names like [ours_batch16] are text)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """A server subprocess in its own process group (Ray's daemons included), logging to a file.

    Entered: started and answering `ready_url` (HTTP 200). Left: SIGTERM, then SIGKILL for whatever
    of its process group is still alive after the grace period, so the next server has the cores.
    """

    def __init__(self, name: str, command: list[str], ready_url: str, log_path: Path, daemons_exit_s: float = 15.0):
        self.name, self.command, self.ready_url, self.log_path = name, command, ready_url, log_path
        self.daemons_exit_s = daemons_exit_s  # after the leader exits, how long its children get to follow
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        say(f"[{self.name}] starting; log: {self.log_path}")
        started = time.perf_counter()
        with self.log_path.open("w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            self.wait_until_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        say(f"[{self.name}] ready in {self.startup_s:.1f} s")
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def wait_until_ready(self, started: float) -> None:
        while time.perf_counter() - started < STARTUP_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"[{self.name}] exited with code {self.process.returncode} before answering {self.ready_url}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise RuntimeError(
            f"[{self.name}] did not answer {self.ready_url} within {STARTUP_TIMEOUT_S:.0f} s; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 60.0) -> None:
        if self.process is None:
            return
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the serve CLI shuts Serve and its Ray down on SIGTERM
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                say(f"[{self.name}] still running {grace_s:.0f} s after SIGTERM; killing it")
        if not wait_for_group_exit(group, self.daemons_exit_s):  # Ray's daemons exit once their driver is gone
            say(f"[{self.name}] processes of its group still running {self.daemons_exit_s:.0f} s later; killing them")
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
            wait_for_group_exit(group, timeout_s=10.0)
        self.process = None


def wait_for_group_exit(group: int, timeout_s: float) -> bool:
    """True once no process of the group is left (killed children count until init reaps them)."""
    deadline = time.perf_counter() + timeout_s
    while process_group_alive(group):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.2)
    return True


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
