"""Seeded simulation of a tool-using agent whose hosted LLM calls are recorded as Langfuse traces.

The simulated hosted LLM (the "teacher") answers exactly the prompts of the xLAM test splits
(`<dataset_root>/{toolcall,structured}/test.jsonl`), so converting the traces back with the trace
converter reproduces those prompts byte for byte, and the offline demo can replay the answers.

Writes `out_json`: JSONL, one trace per line in the shape of Langfuse's
`GET /api/public/traces/{id}` (trace fields plus `observations`), and `<stem>.config.json`
beside it with the resolved settings. Every trace and generation says `"simulated": true`.

Error profile on the teacher's answers (rates in config.py; each kind hits exactly
round(rate × rows) rows, at least one when the rate is positive, chosen with `random.Random(seed)`;
the kind is recorded per generation as `metadata.injected_error`, null when the answer is gold):
- toolcall: wrong_argument_value 4 %, wrong_tool 2 % (another offered tool), two_tool_calls 2 %;
- structured: wrong_value 4 %, prose_around_json 3 %, markdown_fence 2 %.

Noise the converter must skip: multi-turn `llm.respond` generations after every tool call,
`llm.chitchat` generations with prose answers, two-tool-call answers, guardrail EVENTs, and
traces of `other-agent`. Extra `dotted_toolcall` traces offer tools with dotted names
(`crm.lookup_customer`) and record the OpenAI-safe alias (`crm_lookup_customer`) in `tool_calls`.
"""

from ray_app.dummy_agent.config import DummyAgentConfig, ErrorProfile
from ray_app.dummy_agent.workflow import DummyAgentSummary, simulate_traces, write_dummy_traces

__all__ = ["DummyAgentConfig", "DummyAgentSummary", "ErrorProfile", "simulate_traces", "write_dummy_traces"]
