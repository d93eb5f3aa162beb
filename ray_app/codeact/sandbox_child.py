"""The sandbox's child process: runs model-written code with smolagents' `LocalPythonExecutor`.

`SandboxSession` starts it as `python -m ray_app.codeact.sandbox_child` and talks JSON lines:
stdin line 1 is the setup {"tools": [ToolSpec JSON], "limits": {...}}, answered by {"ready": true} once
the executor is built and the resource limits are set; then each stdin line {"code": "..."} is answered
by one reply line (see `_execute`). The executor's variables live as long as this process, so one
process is one trajectory. Why a process: only a process can be killed mid-loop, capped in memory and
kept from sharing the parent's memory. The protocol has fd 1 to itself: anything else that writes to
stdout (a stray print in a library) goes to stderr, which the parent keeps for crash reports.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
from typing import Any, TextIO

from smolagents import local_python_executor as smolagents_executor
from smolagents.local_python_executor import InterpreterError, LocalPythonExecutor, fix_final_answer_code

from ray_app.codeact.records import ToolCallRecord, ToolSpec
from ray_app.codeact.sandbox import REPLY_LIMIT_BYTES
from ray_app.codeact.tool_stubs import to_json_value, tool_stub

# smolagents' own loop guards, stopped before the wall clock: runaway code, reported as `timeout`.
_RUNAWAY_MESSAGES = ("Maximum number of", "Reached the max number of operations")


class CappedPrintContainer(smolagents_executor.PrintContainer):
    """smolagents' print buffer, keeping only the first `limit` characters and counting the rest.

    Why: smolagents appends every print to one string (`self.value += text`, copied each time) and cuts
    it only when the code ends, so printing 10 MB line by line takes minutes and memory. smolagents
    builds the buffer by the module name `PrintContainer`, so `main` puts this class there.
    """

    limit = 4000

    def __init__(self) -> None:
        super().__init__()
        self.cut_chars = 0

    def append(self, text: str) -> CappedPrintContainer:
        room = self.limit - len(self.value)
        if room > 0:
            self.value += text[:room]
        self.cut_chars += max(0, len(text) - max(room, 0))
        return self

    def __iadd__(self, other: object) -> CappedPrintContainer:
        return self.append(str(other))


def final_answer(answer: Any) -> Any:
    """The agent's last call; smolagents wraps it to stop the code and hand `answer` back."""
    return answer


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    setup = json.loads(sys.stdin.readline())
    limits = setup["limits"]
    calls: list[ToolCallRecord] = []
    executor = _build_executor([ToolSpec.from_json(tool) for tool in setup["tools"]], limits, calls)
    random.seed(0)  # `import random` in model code draws the same numbers on every run
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu_seconds = int(limits["cpu_seconds"])  # an orphan (its parent killed mid-run) cannot spin for ever
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    memory_bytes = int(limits["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    _send(protocol, {"ready": True})
    for line in sys.stdin:
        calls.clear()
        _send(protocol, _execute(executor, json.loads(line)["code"], calls, int(limits["output_chars"])))


def _build_executor(tools: list[ToolSpec], limits: dict[str, Any], calls: list[ToolCallRecord]) -> LocalPythonExecutor:
    CappedPrintContainer.limit = int(limits["output_chars"])
    smolagents_executor.PrintContainer = CappedPrintContainer
    imports = list(limits["authorized_imports"])
    # timeout_seconds=None: smolagents' timeout runs the code in a thread it cannot stop; the parent kills us.
    executor = LocalPythonExecutor(
        imports, max_print_outputs_length=10 * CappedPrintContainer.limit, timeout_seconds=None
    )
    # smolagents adds its base modules (time, queue, stat, unicodedata, ...) to the list: ours is the only one.
    executor.authorized_imports = imports
    executor.send_tools({"final_answer": final_answer})
    # Tools after send_tools, so a tool named like a builtin (`round`) is the tool the prompt announced.
    executor.static_tools.update({spec.python_name: tool_stub(spec, calls) for spec in tools})
    return executor


def _execute(executor: LocalPythonExecutor, code: str, calls: list[ToolCallRecord], limit: int) -> dict[str, Any]:
    """Run `code`; the reply says what it printed, its last value or final answer, the error, the violation."""
    reply: dict[str, Any] = {"has_final_answer": False, "final_answer": None, "last_output": None}
    reply |= {"error": None, "error_detail": None, "violation": None}
    # smolagents parses before it resets the print buffer: a syntax error would show the last run's prints.
    executor.state["_print_outputs"] = CappedPrintContainer()
    try:
        output = executor(fix_final_answer_code(code))  # CodeAgent applies this fix too: `final_answer = 3`
    except BaseException as error:  # BaseException: `raise SystemExit` gets past smolagents' `except Exception`
        reply |= _error_fields(error, limit)
    else:
        if output.is_final_answer:
            try:
                reply["final_answer"] = to_json_value(output.output, "the final answer")
                reply["has_final_answer"] = True
            except ValueError as error:  # not JSON: an error the model can mend by calling final_answer again
                reply["error"] = f"TypeError: final_answer() needs a JSON value: {error}"
                reply["error_detail"] = reply["error"]
        elif output.output is not None:
            reply["last_output"] = _cut_repr(output.output, limit)
    printed = executor.state["_print_outputs"]
    reply["logs"] = str(printed)
    reply["logs_cut_chars"] = printed.cut_chars
    reply["tool_calls"] = [call.to_json() for call in calls]
    return reply


def _error_fields(error: BaseException, limit: int) -> dict[str, Any]:
    # smolagents wraps the code's exception: "Code execution failed at line '...' due to: Type: message".
    cause = error.__context__ if isinstance(error, InterpreterError) and error.__context__ else error
    message = str(cause)
    violation = None
    if isinstance(cause, MemoryError):
        violation, message = "memory", "the code needed more memory than the sandbox's limit"
    elif message.startswith(("Import of ", "Import from ")) and "is not allowed" in message:
        violation = "forbidden_import"
    elif message.startswith(("Forbidden ", "Invoking a builtin function")):
        violation = "forbidden_access"
    elif message.startswith(_RUNAWAY_MESSAGES):
        violation = "timeout"
    short = f"{type(cause).__name__}: {message}"
    detail = str(error) if cause is not error and not isinstance(cause, MemoryError) else short
    return {"error": short[:limit], "error_detail": detail[:limit], "violation": violation}


def _cut_repr(value: Any, limit: int) -> str:
    try:
        text = repr(value)
    except Exception as error:  # a class the model wrote may fail in __repr__; huge ints refuse to print
        return f"<repr failed: {type(error).__name__}: {error}>"[:limit]
    return text if len(text) <= limit else f"{text[:limit]}\n[... {len(text) - limit} more characters cut]"


def _send(protocol: TextIO, reply: dict[str, Any]) -> None:
    line = json.dumps(reply)  # ASCII: a lone surrogate the code printed cannot break the UTF-8 pipe
    if len(line) > REPLY_LIMIT_BYTES:
        size = len(line)
        reply = {key: reply.get(key) for key in ("logs", "logs_cut_chars")} | {
            "has_final_answer": False,
            "error": f"OutputLimit: the result is {size} bytes as JSON, over the sandbox's {REPLY_LIMIT_BYTES}",
            "error_detail": f"the final answer or the tool arguments are too large to send back ({size} bytes as JSON)",
            "violation": "output_limit",
            "tool_calls": [],
        }
        line = json.dumps(reply)
    protocol.write(line + "\n")
    protocol.flush()


if __name__ == "__main__":
    main()
