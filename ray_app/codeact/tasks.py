"""CodeAct tasks with checkable answers, built deterministically from the committed data, and their file.

- toolcall: a toolcall row's tools and request; the gold is the row's call, which the code must make.
- structured: a structured row's instruction and request; the gold is the row's JSON, which the code
  must pass to `final_answer` (no tools).
- multistep: generated (see `MULTISTEP_FAMILIES`): the answer needs a tool's result and a computation
  on it or a second call. Their tools carry fixed results tables, so the gold is exact, and their
  `reference_steps` are the two code blocks that reach it (variables live on between steps).

`build_tasks` returns a split's tasks in a fixed order; `write_tasks` / `read_tasks` keep them in a
JSONL file (one `CodeactTask.to_json()` per line), and reading stops with `file:line: reason`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray_app.atomic_files import atomic_write_jsonl
from ray_app.codeact.records import TASK_KINDS, CodeactTask, ToolSpec
from ray_app.data.rows import read_split
from ray_app.json_text import canonical_json, strict_json_loads
from ray_app.paths import project_relative
from ray_app.prompts import parse_gold_tool_call, parse_toolcall_prompt
from ray_app.prompts.templates import template_parts

DEFAULT_SEED = 42
TASK_FIELDS = ("task_id", "kind", "request", "instruction", "tools", "gold", "source")
OPTIONAL_TASK_FIELDS = ("reference_steps",)  # files written before it existed lack it
MAX_PROBLEMS = 20


class TaskFileError(ValueError):
    """One or more tasks are bad; the message lists `file:line: reason` for each."""


def toolcall_tasks(split_path: str | Path) -> list[CodeactTask]:
    """One task per toolcall row: its tools, its request, and its gold call."""
    path = Path(split_path)
    tasks = []
    # read_split refuses blank lines, so row i is line i + 1.
    for line, row in enumerate(read_split(path, "toolcall"), start=1):
        prompt = parse_toolcall_prompt(row.prompt)
        call = parse_gold_tool_call(row.completion)
        # A row may offer one tool twice (the xLAM source does): the agent sees it once, the first time.
        by_name: dict[str, ToolSpec] = {}
        for signature in prompt.signatures:
            by_name.setdefault(signature["name"], ToolSpec(signature["name"], signature["description"],
                                                           signature["parameters"]))  # fmt: skip
        tools = tuple(by_name.values())
        if call.name not in {tool.name for tool in tools}:
            raise TaskFileError(f"{path}:{line}: the gold call names unknown tool {call.name!r}")
        tasks.append(
            CodeactTask(
                kind="toolcall",
                request=prompt.query,
                tools=tools,
                gold={"name": call.name, "arguments": call.arguments},
                source=f"{project_relative(path)}:{line}",
            )
        )
    return tasks


def kinds_in_turn(tasks: list[CodeactTask]) -> list[CodeactTask]:
    """The tasks with their kinds taken in turn (toolcall, structured, multistep, toolcall, ...), each
    kind in its own order: the first N of them see every kind (a quick capture, the demo's evaluation)."""
    by_kind = [[task for task in tasks if task.kind == kind] for kind in TASK_KINDS]
    return [task for group in itertools.zip_longest(*by_kind) for task in group if task is not None]


def gold_call_problem(task: CodeactTask) -> str | None:
    """Why a toolcall task's gold call breaks its own tool's schema (the stub would refuse it), or None.

    Such a task cannot be solved as written: 19 of the 400 committed toolcall rows call a float for
    an "integer" parameter or leave out a "required" one (the xLAM source's schemas are loose).
    """
    if task.kind != "toolcall":
        return None
    from ray_app.codeact.tool_stubs import ToolCallError, tool_stub

    tool = next(tool for tool in task.tools if tool.name == task.gold["name"])
    try:
        tool_stub(tool, [])(**task.gold["arguments"])
    except ToolCallError as error:
        return str(error)
    return None


def split_structured_prompt(prompt: str) -> tuple[str, str]:
    """(instruction, request) of a prompt built from the `structured` template.

    The instruction drops "and nothing else": a CodeAct agent answers with code that calls
    final_answer, and the task template says so.
    """
    head, _ = template_parts("structured", "tool_name")
    _, after_parameters = template_parts("structured", "parameters")
    separator = after_parameters.split("{{query}}")[0]  # "\n\nRequest: "
    instruction, found, request = prompt.partition(separator)
    if not prompt.startswith(head) or not found:
        raise ValueError("the prompt was not built from the structured template")
    return instruction.replace(" and nothing else.", ".", 1), request


def structured_tasks(split_path: str | Path) -> list[CodeactTask]:
    """One task per structured row: the instruction and request; the gold is the row's JSON."""
    path = Path(split_path)
    tasks = []
    for line, row in enumerate(read_split(path, "structured"), start=1):
        try:
            instruction, request = split_structured_prompt(row.prompt)
        except ValueError as error:
            raise TaskFileError(f"{path}:{line}: {error}") from None
        tasks.append(
            CodeactTask(
                kind="structured",
                request=request,
                tools=(),
                gold=strict_json_loads(row.completion.strip()),
                instruction=instruction,
                source=f"{project_relative(path)}:{line}",
            )
        )
    return tasks


# ---- generated multi-step tasks ----------------------------------------------------------------


def _object_schema(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _table(entries: Iterable[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    return {canonical_json(arguments): result for arguments, result in entries}


def _sku(rng: random.Random) -> str:
    return f"SKU-{rng.randrange(1000, 10000)}"


def order_total_task(rng: random.Random) -> CodeactTask:
    """Look up a unit price, multiply by a quantity."""
    skus = list(dict.fromkeys(_sku(rng) for _ in range(4)))
    prices = {sku: rng.randrange(99, 50000) / 100 for sku in skus}
    sku, quantity = rng.choice(skus), rng.randrange(2, 40)
    tool = ToolSpec(
        "catalog.get_unit_price",
        "Look up the unit price of a product in USD.",
        _object_schema(sku={"type": "string"}),
        _table(({"sku": s}, price) for s, price in prices.items()),
    )
    request = f"How much do {quantity} units of {sku} cost in total, in USD? Answer with the number."
    steps = (
        f"price = {tool.python_name}(sku={sku!r})\nprint(price)",
        f"final_answer(round(price * {quantity}, 2))",
    )
    return CodeactTask("multistep", request, (tool,), round(prices[sku] * quantity, 2), reference_steps=steps)


def support_ticket_task(rng: random.Random) -> CodeactTask:
    """Look up a customer id by email, open a ticket for it, answer with the ticket id."""
    names = rng.sample(["ana", "ben", "chloe", "dev", "emil", "fatima", "goran", "hana", "ivan", "jun"], 3)
    domain = rng.choice(["example.com", "mail.test", "corp.example"])
    ids = [f"C-{number}" for number in rng.sample(range(1000, 10000), 3)]
    emails = [f"{name}.{rng.choice('klmnoprst')}@{domain}" for name in names]
    priorities = ["low", "normal", "high"]
    ticket_numbers = iter(rng.sample(range(10000, 100000), len(ids) * len(priorities)))
    tickets = {(cid, p): f"T-{next(ticket_numbers)}" for cid in ids for p in priorities}
    find = ToolSpec(
        "crm.find_customer",
        "Look up a customer's id by email address.",
        _object_schema(email={"type": "string"}),
        _table(({"email": email}, cid) for email, cid in zip(emails, ids, strict=True)),
    )
    create = ToolSpec(
        "crm.create_ticket",
        "Open a support ticket for a customer and return the ticket id.",
        _object_schema(customer_id={"type": "string"}, priority={"type": "string", "enum": priorities}),
        _table(({"customer_id": cid, "priority": p}, ticket) for (cid, p), ticket in tickets.items()),
    )
    which, priority = rng.randrange(3), rng.choice(priorities)
    request = (
        f"Open a {priority} priority support ticket for the customer with email {emails[which]}. "
        "Answer with the ticket id."
    )
    steps = (
        f"customer_id = {find.python_name}(email={emails[which]!r})\nprint(customer_id)",
        f"ticket_id = {create.python_name}(customer_id=customer_id, priority={priority!r})\nfinal_answer(ticket_id)",
    )
    gold = tickets[(ids[which], priority)]
    return CodeactTask("multistep", request, (find, create), gold, reference_steps=steps)


def currency_task(rng: random.Random) -> CodeactTask:
    """Look up an exchange rate, convert an amount, round to cents."""
    currencies = rng.sample(["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK"], 5)
    pairs = [(currencies[0], quote) for quote in currencies[1:]]
    rates = {pair: rng.randrange(1000, 2_000_000) / 10000 for pair in pairs}
    (base, quote), amount = rng.choice(pairs), rng.randrange(10, 5000)
    tool = ToolSpec(
        "fx.get_rate",
        "Look up the exchange rate from one currency to another.",
        _object_schema(base={"type": "string"}, quote={"type": "string"}),
        _table(({"base": b, "quote": q}, rate) for (b, q), rate in rates.items()),
    )
    request = (
        f"Convert {amount} {base} to {quote} at the current exchange rate. "
        "Answer with the amount as a number rounded to 2 decimals."
    )
    steps = (
        f"rate = {tool.python_name}(base={base!r}, quote={quote!r})\nprint(rate)",
        f"final_answer(round({amount} * rate, 2))",
    )
    return CodeactTask("multistep", request, (tool,), round(amount * rates[(base, quote)], 2), reference_steps=steps)


def stock_sum_task(rng: random.Random) -> CodeactTask:
    """Two look-ups of the same tool, then a sum."""
    skus = list(dict.fromkeys(_sku(rng) for _ in range(2)))
    warehouses = rng.sample(["Berlin", "Lyon", "Oslo", "Porto", "Riga", "Turin"], 3)
    stock = {(sku, w): rng.randrange(0, 500) for sku in skus for w in warehouses}
    tool = ToolSpec(
        "inventory.get_stock",
        "Count the units of a product in one warehouse.",
        _object_schema(sku={"type": "string"}, warehouse={"type": "string"}),
        _table(({"sku": s, "warehouse": w}, units) for (s, w), units in stock.items()),
    )
    sku, (first, second) = rng.choice(skus), rng.sample(warehouses, 2)
    request = f"How many units of {sku} are in the {first} and {second} warehouses together? Answer with the number."
    steps = (
        f"first = {tool.python_name}(sku={sku!r}, warehouse={first!r})\n"
        f"second = {tool.python_name}(sku={sku!r}, warehouse={second!r})\nprint(first, second)",
        "final_answer(first + second)",
    )
    gold = stock[(sku, first)] + stock[(sku, second)]
    return CodeactTask("multistep", request, (tool,), gold, reference_steps=steps)


MULTISTEP_FAMILIES: tuple[tuple[str, Callable[[random.Random], CodeactTask]], ...] = (
    ("order_total", order_total_task),
    ("support_ticket", support_ticket_task),
    ("currency", currency_task),
    ("stock_sum", stock_sum_task),
)


def multistep_tasks(count: int, seed: int = DEFAULT_SEED, stream: str = "generated") -> list[CodeactTask]:
    """`count` generated tasks, the families in turn. Task i depends only on (seed, stream, i), so a
    larger count extends a smaller one; `build_tasks` names the stream after the split, which keeps
    train and test tasks apart."""
    tasks = []
    for index in range(count):
        family, build = MULTISTEP_FAMILIES[index % len(MULTISTEP_FAMILIES)]
        task = build(random.Random(f"codeact-multistep:{seed}:{stream}:{index}"))
        tasks.append(replace(task, source=f"generated:multistep:{stream}:{family}:{index}"))
    return tasks


def build_tasks(
    dataset_dir: str | Path, split: str | None, multistep_count: int, seed: int = DEFAULT_SEED
) -> list[CodeactTask]:
    """The split's toolcall tasks, then its structured tasks, then `multistep_count` generated ones
    (stream = the split). `split=None`: only the generated tasks, of the default stream."""
    if split is None:
        return multistep_tasks(multistep_count, seed)
    root = Path(dataset_dir)
    return (
        toolcall_tasks(root / "toolcall" / f"{split}.jsonl")
        + structured_tasks(root / "structured" / f"{split}.jsonl")
        + multistep_tasks(multistep_count, seed, stream=split)
    )


# ---- the tasks file ----------------------------------------------------------------------------


def write_tasks(path: str | Path, tasks: Iterable[CodeactTask]) -> Path:
    """One `CodeactTask.to_json()` per line (written atomically)."""
    return atomic_write_jsonl(path, (task.to_json() for task in tasks))


def _tool_problem(tool: Any, index: int) -> str | None:
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        return f"{where} must be an object with name, description, parameters"
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        return f"{where}.name must be a non-empty string"
    if not isinstance(tool.get("description", ""), str):
        return f"{where}.description must be a string"
    parameters = tool.get("parameters")
    if (
        not isinstance(parameters, dict)
        or parameters.get("type") != "object"
        or not isinstance(parameters.get("properties", {}), dict)
        or not isinstance(parameters.get("required", []), list)
    ):
        return f'{where}.parameters must be a JSON Schema object ({{"type": "object", "properties": {{...}}}})'
    if tool.get("results") is not None and not isinstance(tool["results"], dict):
        return f"{where}.results must be an object (canonical JSON of the arguments -> result)"
    return None


def task_problem(record: Any) -> str | None:
    """Why `record` is not a valid task object, or None when it is."""
    if not isinstance(record, dict):
        return f"a task must be a JSON object, got {type(record).__name__}"
    missing = [key for key in TASK_FIELDS if key not in record]
    extra = sorted(set(record) - set(TASK_FIELDS) - set(OPTIONAL_TASK_FIELDS))
    if missing or extra:
        parts = ([f"missing field(s) {', '.join(missing)}"] if missing else []) + (
            [f"unexpected field(s) {', '.join(extra)}"] if extra else []
        )
        return "; ".join(parts) + f" (a task has {', '.join(TASK_FIELDS)} and optionally reference_steps)"
    if record["kind"] not in TASK_KINDS:
        return f"field 'kind' is {record['kind']!r}, expected one of {', '.join(TASK_KINDS)}"
    for key in ("task_id", "request", "instruction", "source"):
        if not isinstance(record[key], str):
            return f"field {key!r} must be a string, got {type(record[key]).__name__}"
    if not record["request"].strip():
        return "field 'request' is empty"
    steps = record.get("reference_steps", [])
    if not (isinstance(steps, list) and all(isinstance(step, str) and step.strip() for step in steps)):
        return "field 'reference_steps' must be a list of code blocks (non-empty strings)"
    if not isinstance(record["tools"], list):
        return f"field 'tools' must be a list, got {type(record['tools']).__name__}"
    for index, tool in enumerate(record["tools"]):
        if problem := _tool_problem(tool, index):
            return problem
    names = [tool["name"] for tool in record["tools"]]
    if len(set(names)) != len(names):
        return "field 'tools' names a tool twice"
    gold = record["gold"]
    if record["kind"] == "toolcall":
        if not (
            isinstance(gold, dict) and isinstance(gold.get("name"), str) and isinstance(gold.get("arguments"), dict)
        ):
            return 'field \'gold\' of a toolcall task must be {"name": TOOL, "arguments": {...}}'
        if gold["name"] not in names:
            return f"field 'gold' calls unknown tool {gold['name']!r} (the task offers: {', '.join(names) or 'none'})"
    elif record["kind"] == "structured" and not record["instruction"].strip():
        return "field 'instruction' is empty (a structured task says what JSON to return)"
    elif record["kind"] == "multistep" and (gold is None or not names):
        return "a multistep task needs tools and a non-null gold"
    computed = CodeactTask.from_json(record).task_id
    if record["task_id"] != computed:
        return f"field 'task_id' is {record['task_id']!r} but the task's content hashes to {computed!r}"
    return None


def read_tasks(path: str | Path) -> list[CodeactTask]:
    """Every task of a tasks file, or TaskFileError listing `file:line: reason` for each bad line."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: file not found (build it with build_tasks + write_tasks)")
    tasks: list[CodeactTask] = []
    problems: list[str] = []
    first_line_of_task: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            record: Any = None
            if not line.strip():
                problem = "empty line (JSONL wants one task per line)"
            else:
                try:
                    record = strict_json_loads(line)
                except ValueError as error:
                    problem = f"not valid JSON: {error}"
                else:
                    problem = task_problem(record)
            if problem is None:
                first = first_line_of_task.setdefault(record["task_id"], line_number)
                if first != line_number:
                    problem = f"duplicate task {record['task_id']} (first seen at line {first})"
            if problem is None:
                tasks.append(CodeactTask.from_json(record))
            elif len(problems) < MAX_PROBLEMS:
                problems.append(f"{path}:{line_number}: {problem}")
            else:
                problems[-1] = f"{path}: more bad tasks not shown"
    if problems:
        raise TaskFileError("\n".join(problems))
    return tasks
