"""The CodeAct tool stubs and sandbox: schema checks, deterministic results, and code the sandbox must survive.

Every sandbox case ends in bounded time with its reason in the observation, and the session still runs
code afterwards. No Ray, no model: a real child process runs smolagents' interpreter.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

from ray_app.codeact.records import ToolCallRecord, ToolSpec
from ray_app.codeact.sandbox import REPLY_LIMIT_BYTES, SandboxLimits, SandboxSession
from ray_app.codeact.tool_stubs import ToolCallError, to_json_value, tool_stub
from ray_app.json_text import canonical_json

TICKET = ToolSpec(
    name="crm.create_ticket",
    description="Open a support ticket.",
    parameters={
        "type": "object",
        "properties": {
            "customer_id": {"type": "string"},
            "priority": {"type": "integer"},
            "weight": {"type": "number"},
            "urgent": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "contact": {
                "type": "object",
                "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
                "required": ["email"],
            },
        },
        "required": ["customer_id"],
    },
)
WEATHER = ToolSpec(
    name="get_weather",
    description="Weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"],
    },
)
STOCK = ToolSpec(
    name="inventory.get_stock",
    description="Units in stock for a SKU.",
    parameters={"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]},
    results={canonical_json({"sku": "A1"}): {"sku": "A1", "count": 7}},
)
TIMEOUT_S = 2.0
QUICK_S = 5.0  # generous bound for anything that does not wait for the timeout (2 cores, other tests running)


# --- tool stubs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "args", "kwargs", "message"),
    [
        (TICKET, (), {"priority": 1}, "crm_create_ticket(): missing required argument 'customer_id'"),
        (TICKET, (), {"customer_id": "c1", "owner": "x"}, "crm_create_ticket(): unknown argument 'owner'"),
        (TICKET, (), {"customer_id": 17}, "crm_create_ticket(): 'customer_id' must be string, got 17 (integer)"),
        (TICKET, (), {"customer_id": "c1", "priority": True}, "'priority' must be integer, got true (boolean)"),
        (TICKET, (), {"customer_id": "c1", "priority": 2.0}, "'priority' must be integer, got 2.0 (number)"),
        (TICKET, (), {"customer_id": "c1", "weight": "3"}, "'weight' must be number, got \"3\" (string)"),
        (TICKET, (), {"customer_id": "c1", "note": 5}, "'note' must be string or null, got 5 (integer)"),
        (TICKET, (), {"customer_id": "c1", "tags": ["a", 2]}, "'tags[1]' must be string, got 2 (integer)"),
        (TICKET, (), {"customer_id": "c1", "contact": {"phone": "1"}}, "'contact' is missing the required key 'email'"),
        (TICKET, (), {"customer_id": "c1", "contact": {"email": 1}}, "'contact.email' must be string, got 1 (integer)"),
        (TICKET, ("c1",), {"customer_id": "c2"}, "got multiple values for argument 'customer_id'"),
        (WEATHER, ("Paris", "c", 3), {}, "get_weather(): takes 2 arguments (city, unit), got 3 positional"),
        (
            WEATHER,
            (),
            {"city": "Paris", "unit": "kelvin"},
            'get_weather(): \'unit\' must be one of ["c", "f"], got "kelvin"',
        ),
        (WEATHER, (), {"city": "Paris", "unit": {"c"}}, "get_weather(): 'unit' must be string, got {'c'} (set)"),
        (STOCK, (), {"sku": "Z9"}, 'inventory_get_stock(): no result for these arguments: {"sku": "Z9"}'),
    ],
)
def test_stub_refuses_a_bad_call_and_records_it(spec, args, kwargs, message):
    calls: list[ToolCallRecord] = []
    with pytest.raises(ToolCallError) as raised:
        tool_stub(spec, calls)(*args, **kwargs)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert len(calls) == 1 and calls[0].name == spec.name and calls[0].error == str(raised.value)
    assert canonical_json(calls[0].arguments)  # a refused call is still recorded as JSON


def test_stub_accepts_a_good_call_and_records_json_arguments():
    calls: list[ToolCallRecord] = []
    stub = tool_stub(TICKET, calls)
    stub("c1", priority=2, weight=3, urgent=False, note=None, tags=("a", "b"), contact={"email": "a@b.c"})
    assert calls == [
        ToolCallRecord(
            name="crm.create_ticket",
            arguments={
                "customer_id": "c1",
                "priority": 2,
                "weight": 3,  # an int is a JSON number
                "urgent": False,
                "note": None,
                "tags": ["a", "b"],  # the tuple is recorded as a list
                "contact": {"email": "a@b.c"},
            },
            error=None,
        )
    ]
    assert stub.__name__ == "crm_create_ticket"


def test_stub_receipt_is_derived_from_the_arguments_only():
    stub = tool_stub(WEATHER, [])
    first, again = stub(city="Paris", unit="c"), stub(unit="c", city="Paris")
    digest = hashlib.sha256(b'{"arguments":{"city":"Paris","unit":"c"},"tool":"get_weather"}').hexdigest()
    assert (
        first
        == again
        == {"tool": "get_weather", "status": "ok", "id": digest[:8], "echo": {"city": "Paris", "unit": "c"}}
    )
    assert stub(city="Lyon")["id"] != first["id"]


def test_stub_returns_the_results_table_entry_as_a_copy():
    stub = tool_stub(STOCK, [])
    result = stub("A1")
    assert result == {"sku": "A1", "count": 7}
    result["count"] = 0
    assert stub(sku="A1")["count"] == 7


def test_to_json_value_refuses_what_json_would_change_or_reject():
    assert to_json_value({"a": (1, [2.5, None])}) == {"a": [1, [2.5, None]]}
    for value, problem in [(float("nan"), "NaN"), ({1: 2}, "keys must be strings"), ({1, 2}, "is a set")]:
        with pytest.raises(ValueError, match=problem):
            to_json_value(value)


# --- sandbox ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session():
    with SandboxSession([TICKET, WEATHER, STOCK], SandboxLimits(timeout_s=TIMEOUT_S)) as sandbox:
        yield sandbox


def timed_run(session: SandboxSession, code: str):
    started = time.monotonic()
    execution = session.run(code)
    return execution, time.monotonic() - started


def assert_still_usable(session: SandboxSession) -> None:
    execution, elapsed = timed_run(session, "1 + 1")
    assert execution.error is None and execution.observation == "Last output from code snippet:\n2"
    assert elapsed < QUICK_S


@pytest.mark.parametrize(
    ("code", "violation", "reason"),
    [
        ("import os", "forbidden_import", "Import of os is not allowed"),
        ("import time\ntime.sleep(60)", "forbidden_import", "Import of time is not allowed"),  # smolagents allows it
        ("open('/etc/passwd').read()", "forbidden_access", "Forbidden function evaluation: 'open'"),
        ("().__class__.__base__.__subclasses__()", "forbidden_access", "Forbidden access to dunder attribute"),
        ("x = bytearray(10 * 1024**3)", "forbidden_access", "'bytearray' is not among the explicitly allowed"),
        ('x = "x" * (10 * 1024**3)', "memory", "MemoryError"),
        ("x = [0] * (10 * 1024**3)", "memory", "MemoryError"),
    ],
)
def test_refused_code_keeps_the_session_and_its_variables(session, code, violation, reason):
    session.run("kept = 41")
    execution, elapsed = timed_run(session, code)
    assert elapsed < QUICK_S
    assert execution.violation == violation
    assert reason in execution.observation and execution.observation.startswith("Error: ")
    assert execution.error and not execution.has_final_answer
    assert session.run("kept + 1").observation.endswith("\n42")  # same child: the variable survived


def test_endless_loop_is_killed_on_time_and_the_next_run_starts_fresh(session):
    session.run("kept = 41")
    first_pid = session.child_pid
    execution, elapsed = timed_run(session, "while True:\n    pass")
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5
    assert execution.violation == "timeout" and execution.error.startswith("TimeoutError")
    assert "stopped" in execution.observation and "variables" in execution.observation  # the model is told
    assert session.child_pid != first_pid
    assert_still_usable(session)
    assert "`kept` is not defined" in session.run("kept").observation


@pytest.mark.parametrize(
    "code",
    [
        'print("x" * (10 * 1024**2))',  # one 10 MB print
        'line = "x" * 99\nfor i in range(100_000):\n    print(line)',  # 10 MB in 100,000 prints
    ],
)
def test_printing_ten_megabytes_is_cut_with_a_note(session, code):
    execution, elapsed = timed_run(session, code)
    assert elapsed < QUICK_S
    assert execution.violation == "output_limit" and execution.error is None
    limit = session.limits.output_chars
    assert execution.observation.startswith("Execution logs:\nxxx")
    assert len(execution.observation) < limit + 200
    assert "more characters cut" in execution.observation
    assert_still_usable(session)


def test_an_error_after_a_flood_of_prints_stays_visible(session):
    execution = session.run('print("y" * 100_000)\nundefined_name_zz')
    assert execution.violation == "output_limit"
    assert "The variable `undefined_name_zz` is not defined" in execution.observation
    assert len(execution.observation) < session.limits.output_chars + 200


def test_a_bad_tool_call_is_an_error_the_model_reads(session):
    execution, elapsed = timed_run(session, 'get_weather(city="Paris", unit="kelvin")')
    assert elapsed < QUICK_S
    assert execution.error == 'ToolCallError: get_weather(): \'unit\' must be one of ["c", "f"], got "kelvin"'
    assert execution.violation is None
    assert 'must be one of ["c", "f"]' in execution.observation
    assert execution.tool_calls == (
        ToolCallRecord(
            "get_weather", {"city": "Paris", "unit": "kelvin"}, execution.error.removeprefix("ToolCallError: ")
        ),
    )
    assert_still_usable(session)


def test_state_and_a_tool_result_carry_over_steps_to_the_final_answer(session):
    first = session.run('stock = inventory_get_stock(sku="A1")\nprint("count:", stock["count"])')
    assert first.observation == "Execution logs:\ncount: 7"
    assert first.tool_calls == (ToolCallRecord("inventory.get_stock", {"sku": "A1"}, None),)
    assert not first.has_final_answer
    second = session.run(
        'total = stock["count"] * 3\nfinal_answer({"sku": stock["sku"], "total": total, "pair": (1, 2)})'
    )
    assert second.tool_calls == ()  # only this execution's calls
    assert second.has_final_answer and second.final_answer == {"sku": "A1", "total": 21, "pair": [1, 2]}
    assert second.error is None and second.violation is None


def test_a_final_answer_that_is_not_json_is_an_error_not_an_answer(session):
    execution = session.run("final_answer({1, 2})")
    assert not execution.has_final_answer and execution.final_answer is None
    assert execution.error.startswith("TypeError: final_answer() needs a JSON value")


def test_a_final_answer_too_large_to_send_back_is_refused(session):
    execution = session.run(f'final_answer("z" * {REPLY_LIMIT_BYTES + 1})')
    assert execution.violation == "output_limit" and not execution.has_final_answer
    assert_still_usable(session)


def test_stub_result_is_the_same_in_the_sandbox_child_and_here(session):
    execution = session.run('final_answer(crm_create_ticket("c1", tags=["vip"]))')
    here = tool_stub(TICKET, [])("c1", tags=["vip"])
    assert execution.final_answer == here  # another process, another hash seed: same receipt


def test_a_child_that_died_between_runs_is_reported_and_replaced(session):
    session.run("kept = 41")
    os.kill(session.child_pid, signal.SIGKILL)
    execution, elapsed = timed_run(session, "kept")
    assert elapsed < QUICK_S
    assert execution.violation == "crashed" and "SIGKILL" in execution.error
    assert "variables" in execution.observation
    assert_still_usable(session)


def test_close_leaves_no_zombie_and_no_open_descriptor():
    descriptors = set(os.listdir("/proc/self/fd"))
    sandbox = SandboxSession([WEATHER], SandboxLimits(timeout_s=1.0))
    first_pid = sandbox.child_pid
    assert sandbox.run("while True:\n    pass").violation == "timeout"  # one kill and restart inside
    second_pid = sandbox.child_pid
    sandbox.close()
    sandbox.close()  # twice is fine
    for pid in (first_pid, second_pid):
        with pytest.raises(ChildProcessError):  # already reaped: not a zombie waiting for us
            os.waitpid(pid, os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) == descriptors
    with pytest.raises(RuntimeError, match="after close"):
        sandbox.run("1")


def test_bad_limits_and_clashing_tool_names_fail_before_a_child_starts():
    with pytest.raises(ValueError, match="wildcard"):
        SandboxLimits(authorized_imports=("math", "*"))
    clash = ToolSpec("crm_create_ticket", "", {"type": "object", "properties": {}})
    with pytest.raises(ValueError, match="'crm_create_ticket', already taken by 'crm.create_ticket'"):
        SandboxSession([TICKET, clash])


def test_an_optional_argument_given_as_none_is_left_out_and_positionals_bind_in_signature_order():
    """The prompt shows optional parameters as `= None` and required ones first (python_signatures)."""
    calls: list[ToolCallRecord] = []
    weather = tool_stub(WEATHER, calls)
    weather("Oslo", unit=None)
    ticket = tool_stub(TICKET, calls)
    ticket("c-1", note=None)  # `note` allows null: kept
    optional_first = ToolSpec(
        "reorder",
        "Required after optional in the schema.",
        {"type": "object", "properties": {"limit": {"type": "integer"}, "query": {"type": "string"}},
         "required": ["query"]},
    )  # fmt: skip
    tool_stub(optional_first, calls)("shoes", 3)
    assert [call.arguments for call in calls] == [
        {"city": "Oslo"},
        {"customer_id": "c-1", "note": None},
        {"query": "shoes", "limit": 3},
    ]
    assert all(call.error is None for call in calls)
