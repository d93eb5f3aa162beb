"""Pulling an agent's generations with the real langfuse SDK from a recording server on 127.0.0.1."""

import base64
import json

import pytest

from ray_app.data.langfuse_pull import (
    LangfuseSettingsError,
    langfuse_client_from_env,
    pull_observations,
    traces_from_observations,
)
from ray_app.data.traces import convert_traces
from ray_app.prompts import format_tool_call, openai_tool, toolcall_prompt
from tests.recording_server import RecordingServer

WEATHER = {
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def observation(obs_id, trace_id, start, **fields):
    # The v2 API returns input/output as raw strings; metadata only with the `metadata` field group.
    return {"id": obs_id, "traceId": trace_id, "projectId": "p1", "startTime": start, "type": "SPAN", **fields}


def generation(obs_id, trace_id, start, user_text, city, **fields):
    request = {"messages": [{"role": "user", "content": user_text}], "tools": [openai_tool(WEATHER)]}
    answer = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    ]}  # fmt: skip
    return observation(
        obs_id, trace_id, start, type="GENERATION", input=json.dumps(request), output=json.dumps(answer), **fields
    )


PAGES = [
    [
        observation("root-1", "t1", "2026-11-01T09:00:00Z", name="agent.run", metadata={"agentId": "weather-bot"}),
        generation("g1", "t1", "2026-11-01T09:00:01Z", "Weather in Oslo?", "Oslo"),
        generation("g2", "t2", "2026-11-01T09:01:01Z", "Weather in Rome?", "Rome", tags=["agent:weather-bot"]),
    ],
    [
        generation("g3", "t3", "2026-11-01T09:02:01Z", "Weather in Lima?", "Lima", traceName="weather-bot"),
        generation("g4", "t4", "2026-11-01T09:03:01Z", "Weather in Nice?", "Nice", metadata={"agentId": "other"}),
    ],
]


def handler(request):
    if request.path != "/api/public/v2/observations":
        return 404, {"message": "not found"}, {}
    page = int(request.query.get("cursor", ["0"])[0])
    meta = {"cursor": str(page + 1)} if page + 1 < len(PAGES) else {}
    return 200, {"data": PAGES[page], "meta": meta}, {}


def test_pull_pages_with_the_sdk_and_converts(monkeypatch):
    with RecordingServer(handler) as server:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
        monkeypatch.delenv("LANGFUSE_BASE_URL", raising=False)
        monkeypatch.setenv("LANGFUSE_HOST", server.url)  # the seed's name for the variable
        client = langfuse_client_from_env()
        pages_seen = []
        observations = pull_observations(client, on_page=lambda page, total: pages_seen.append((page, total)))
    assert pages_seen == [(1, 3), (2, 5)]
    gets = [r for r in server.requests if r.path == "/api/public/v2/observations"]
    assert len(gets) == 2
    assert gets[0].headers["authorization"] == "Basic " + base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    assert "cursor" not in gets[0].query and gets[1].query["cursor"] == ["1"]
    assert set(gets[0].query["fields"][0].split(",")) >= {"core", "basic", "io", "metadata", "trace_context"}
    traces = traces_from_observations(observations)
    assert [t["id"] for t in traces] == ["t1", "t2", "t3", "t4"]
    conversion = convert_traces(traces, "weather-bot")
    assert conversion.traces_matched == 3
    rows = [c.row for c in conversion.candidates["toolcall"]]
    assert [r.completion for r in rows] == [
        format_tool_call("get_weather", {"city": c}) for c in ("Oslo", "Rome", "Lima")
    ]
    assert rows[0].prompt == toolcall_prompt([WEATHER], "Weather in Oslo?")


def test_missing_keys_name_the_variables(monkeypatch):
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk")
    with pytest.raises(LangfuseSettingsError, match="LANGFUSE_PUBLIC_KEY"):
        langfuse_client_from_env()
