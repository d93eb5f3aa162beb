"""Run model-written code for the CodeAct loop: one child process per trajectory, and the run never stops.

`SandboxSession(tools, limits)` starts one child process (`ray_app.codeact.sandbox_child`) that runs each
code action with smolagents' `LocalPythonExecutor`, the interpreter smolagents' CodeAgent uses. Variables
defined in one step are there in the next, as in CodeAgent. `run(code)` returns a `records.Execution`:
what the code printed, its last value (smolagents' "Last output", which includes the value of a last
assignment) or its error, the tool calls it made, the final answer, and a violation code when the
sandbox refused or stopped the code. `run` never raises for anything the code does.

What it protects against (an offline pipeline running a model that makes mistakes):
- imports: only `SandboxLimits.authorized_imports` (smolagents' own extra base modules, `time` among
  them, are dropped), so no `os`, `sys`, `subprocess`, `socket`, `pathlib`, `io`: `forbidden_import`;
- file, network and process access through the interpreter's allow-list: smolagents evaluates the AST
  itself and offers only listed builtins, so `open`, `eval`, `exec`, `compile`, `globals`, `bytearray`
  and dunder attributes (`().__class__.__base__.__subclasses__()`) are refused: `forbidden_access`;
- runaway time: the parent kills the child (its whole process group) after `timeout_s` wall-clock
  seconds; smolagents' own caps (1,000,000 while-loop iterations, 10,000,000 operations) often stop a
  loop first, without a kill, and are reported as `timeout` too;
- memory: RLIMIT_AS in the child, so a 10 GB allocation is a MemoryError (`memory`), not a dead host;
- an orphan: a child whose parent died mid-run is killed after max(600, 60 x timeout_s) CPU seconds;
- output: prints are kept up to `output_chars` while the code runs (the rest is counted, not stored:
  `output_limit`), and the parent reads at most `REPLY_LIMIT_BYTES` per reply;
- secrets: the child's environment has no API keys (PATH, PYTHONPATH and PYTHONHASHSEED only);
- a dead or killed child: a fresh one is started, and the observation tells the model that the
  variables from earlier steps are gone. No core dumps, no zombies, no leaked file descriptors.

What it does not protect against: it is not a security boundary against a determined attacker. The child
runs as the same user on the same filesystem, and smolagents says itself that `LocalPythonExecutor` "is
not a security sandbox": an escape from its allow-list gives the full power of Python. For untrusted
models, run the whole job inside a container with no network, a read-only filesystem and a memory cap:

    docker run --rm --network none --read-only --tmpfs /tmp --memory 8g --pids-limit 256 \
        --cap-drop ALL --security-opt no-new-privileges -v "$PWD/outputs:/app/outputs" slm-swap ...

A killed execution (timeout, crash) reports no tool calls: they were recorded in the child that died.
A final answer must be a JSON value (tuples become lists); anything else (a set, NaN, a dict with int
keys) is an error the model sees and can mend, never a silent conversion.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_app.codeact.records import Execution, ToolCallRecord, ToolSpec

REPLY_LIMIT_BYTES = 8 * 1024 * 1024  # one reply line: a final answer or tool arguments larger than this are refused
STARTUP_TIMEOUT_S = 60.0  # the child imports smolagents: ~0.5 s alone, seconds on a loaded 2-core machine
_CHILD_MODULE = "ray_app.codeact.sandbox_child"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # put on the child's PYTHONPATH: any cwd works
_RESTARTED = "The sandbox was restarted: variables, functions and imports from earlier steps are gone."


@dataclass(frozen=True)
class SandboxLimits:
    """What one code execution may use. `authorized_imports` is the one list: the system prompt shows it."""

    timeout_s: float = 10.0  # wall clock per execution; the child is killed after it
    # Address space of the child (RLIMIT_AS). The child with smolagents loaded and every authorized module
    # imported maps ~75 MB, so 1024 MB leaves ~900 MB for the code's own data (a 10**7-int list is ~360 MB).
    memory_mb: int = 1024
    output_chars: int = 4000  # printed text kept per execution; the observation says how much was cut
    authorized_imports: tuple[str, ...] = (
        "math",
        "json",
        "re",
        "datetime",
        "statistics",
        "collections",
        "itertools",
        "functools",
        "random",
        "string",
        "decimal",
        "fractions",
    )

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"SandboxLimits.timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.memory_mb < 256:
            raise ValueError(
                f"SandboxLimits.memory_mb must be >= 256 (the child alone maps ~75 MB), got {self.memory_mb}"
            )
        if self.output_chars < 200:
            raise ValueError(f"SandboxLimits.output_chars must be >= 200, got {self.output_chars}")
        if any(name == "*" or name.endswith(".*") for name in self.authorized_imports):
            raise ValueError("SandboxLimits.authorized_imports: a wildcard would allow every import, os included")


class SandboxSession:
    """One child process for one trajectory; use as a context manager, or call `close()`."""

    def __init__(self, tools: Sequence[ToolSpec], limits: SandboxLimits | None = None) -> None:
        _check_tool_names(tools)
        self.limits = limits or SandboxLimits()
        self._setup = {"tools": [tool.to_json() for tool in tools], "limits": _limits_json(self.limits)}
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._buffer = bytearray()
        self._ready = False
        self._closed = False
        self._start()
        problem = self._wait_ready()
        if problem:
            self.close()
            raise RuntimeError(
                f"the CodeAct sandbox child ({sys.executable} -m {_CHILD_MODULE}) did not start: {problem}"
            )

    def __enter__(self) -> SandboxSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def child_pid(self) -> int | None:
        """The running child's process id (it changes after a kill); None after `close()`."""
        return self._process.pid if self._process else None

    def run(self, code: str) -> Execution:
        """Execute one code action; returns within `timeout_s` (plus the child's start-up after a kill)."""
        if self._closed:
            raise RuntimeError("SandboxSession.run() after close(): start a new session")
        if not self._ready:
            problem = self._wait_ready()
            if problem:
                note = f"the sandbox process did not start ({problem})"
                return self._restart(time.monotonic(), "crashed", f"SandboxCrash: {problem}", note)
        started = time.monotonic()
        try:
            assert self._process is not None and self._process.stdin is not None
            self._process.stdin.write((json.dumps({"code": code}) + "\n").encode())
            self._process.stdin.flush()
        except OSError:  # the child died between two runs
            return self._crashed(started)
        line, why = self._read_line(started + self.limits.timeout_s)
        if why == "timeout":
            error = f"TimeoutError: the code ran longer than {self.limits.timeout_s:g} s"
            note = f"the code was still running after {self.limits.timeout_s:g} s and was stopped"
            return self._restart(started, "timeout", error, note)
        if why == "too_long":
            error = f"OutputLimit: the sandbox's reply was over {REPLY_LIMIT_BYTES} bytes"
            return self._restart(started, "output_limit", error, "its result was too large to send back")
        if line is None:
            return self._crashed(started)
        return execution_from_reply(json.loads(line), self.limits.output_chars, time.monotonic() - started)

    def close(self) -> None:
        """Kill the child and its process group and reap it; safe to call twice."""
        self._closed = True
        self._stop()

    def _start(self) -> None:
        # A file, not a pipe: a pipe nobody drains fills up and blocks the child. Closed in _stop.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        pythonpath = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": pythonpath, "PYTHONHASHSEED": "42"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", _CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,  # its own process group: one killpg stops anything it started
        )
        self._ready = False
        with contextlib.suppress(OSError):  # a child that died at once is reported by _wait_ready, with its stderr
            self._process.stdin.write((json.dumps(self._setup) + "\n").encode())  # type: ignore[union-attr]
            self._process.stdin.flush()  # type: ignore[union-attr]

    def _wait_ready(self) -> str | None:
        line, why = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        if line is None:
            return f"no ready message ({why}); {self._exit_description()}"
        if json.loads(line).get("ready") is not True:
            return f"unexpected first message {line[:200]!r}"
        self._ready = True
        return None

    def _read_line(self, deadline: float) -> tuple[bytes | None, str]:
        """One reply line, read from the raw pipe so a hung child cannot block past `deadline`."""
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        poller = select.poll()  # not select.select: a Ray worker's descriptors can pass FD_SETSIZE
        poller.register(fd, select.POLLIN)
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line, "ok"
            if len(self._buffer) > REPLY_LIMIT_BYTES:
                return None, "too_long"
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                return None, "timeout"
            if poller.poll(left_s * 1000):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None, "eof"
                self._buffer += chunk

    def _crashed(self, started: float) -> Execution:
        with contextlib.suppress(subprocess.TimeoutExpired):  # its stdout closes a moment before it exits
            self._process.wait(timeout=2)  # type: ignore[union-attr]
        how = self._exit_description()
        violation = "memory" if "MemoryError" in how else "crashed"
        return self._restart(started, violation, f"SandboxCrash: {how}", f"the sandbox process died ({how})")

    def _restart(self, started: float, violation: str, error: str, note: str) -> Execution:
        """Kill the child, start a fresh one now (it loads while the model writes its next step), report."""
        self._stop()
        self._start()
        observation = f"Error: {note}. {_RESTARTED}"
        return Execution(observation, error=error, violation=violation, duration_s=time.monotonic() - started)

    def _exit_description(self) -> str:
        process = self._process
        if process is None or process.poll() is None:
            return "the child is still running"
        code = process.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 2000))
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return f"{how}: {lines[-1]}" if lines else how

    def _stop(self) -> None:
        process, self._process = self._process, None
        self._buffer.clear()
        self._ready = False
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group still exists until the child is reaped below
        process.wait()
        for stream in (process.stdin, process.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]


def execution_from_reply(reply: dict[str, Any], output_chars: int, duration_s: float) -> Execution:
    """The child's reply as an `Execution`; the observation is what the model reads after "Observation: "."""
    violation = reply["violation"] or ("output_limit" if reply["logs_cut_chars"] else None)
    return Execution(
        observation=observation_text(reply, output_chars),
        tool_calls=tuple(ToolCallRecord.from_json(call) for call in reply["tool_calls"]),
        has_final_answer=reply["has_final_answer"],
        final_answer=reply.get("final_answer"),
        error=reply["error"],
        violation=violation,
        duration_s=duration_s,
    )


def observation_text(reply: dict[str, Any], output_chars: int) -> str:
    """Printed output, then the error, final answer or last value, in about `output_chars` characters.

    The result part keeps at most half the budget, so a flood of prints never hides the error.
    """
    if reply["error"]:
        result = f"Error: {reply['error_detail'] or reply['error']}"
    elif reply["has_final_answer"]:
        result = f"Final answer: {json.dumps(reply['final_answer'], ensure_ascii=False)}"
    elif reply["last_output"] is not None:
        result = f"Last output from code snippet:\n{reply['last_output']}"
    else:
        result = ""
    result = _cut(result, output_chars // 2, 0)
    logs = reply["logs"].rstrip("\n")
    if not logs and not reply["logs_cut_chars"]:
        return result or "(no output: the code printed nothing and its last line has no value)"
    logs = _cut(logs, output_chars - len(result), reply["logs_cut_chars"])
    return f"Execution logs:\n{logs}" + (f"\n{result}" if result else "")


def _cut(text: str, keep_chars: int, already_cut: int) -> str:
    cut = max(0, len(text) - keep_chars) + already_cut
    if not cut:
        return text
    return f"{text[:keep_chars]}\n[... {cut:,} more characters cut: the sandbox keeps {keep_chars:,}]"


def _limits_json(limits: SandboxLimits) -> dict[str, Any]:
    return {
        # CPU seconds for the child's whole life: far above what a trajectory uses (steps x timeout_s), so only
        # an orphan whose parent died mid-run meets it (killed by SIGXCPU); the parent kills on wall time.
        "cpu_seconds": max(600, int(60 * limits.timeout_s)),
        "memory_mb": limits.memory_mb,
        "output_chars": limits.output_chars,
        "authorized_imports": list(limits.authorized_imports),
    }


def _check_tool_names(tools: Sequence[ToolSpec]) -> None:
    """Two tools may not share a Python name, nor take `final_answer`: the code could reach only one."""
    seen: dict[str, str] = {"final_answer": "the final_answer tool"}
    for tool in tools:
        if tool.python_name in seen:
            taken_by = seen[tool.python_name]
            raise ValueError(
                f"tool {tool.name!r} has the Python name {tool.python_name!r}, already taken by {taken_by}"
            )
        seen[tool.python_name] = repr(tool.name)
