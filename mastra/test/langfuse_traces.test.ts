/**
 * Traces of the example Mastra agent as `@mastra/langfuse` really exports them, for Phase II.
 *
 * The agent of `src/agent.ts` (the `greatest_common_divisor` tool, Langfuse tracing through
 * `@mastra/observability`) runs against two servers started here on 127.0.0.1:
 * - a scripted OpenAI-compatible model: each request gets the next turn of its user request's script
 *   (a tool call, then after the tool's result another call or the final text), so every run is a
 *   real multi-step Mastra run: the model calls, Mastra validates and executes the tool, sends the
 *   result back, and the model answers;
 * - a recording server standing in for Langfuse, which keeps what the exporter posts.
 *
 * The exporter sends OTLP/JSON to `/api/public/otel/v1/traces` (one `ExportTraceServiceRequest` per
 * POST). With `SLM_SWAP_MASTRA_TRACES_OUT=DIR` the test writes what was received to
 * `DIR/mastra_langfuse_export.jsonl` (one POST body per line, as sent) and the tools Mastra offered
 * the model (the request's OpenAI `tools`; the exporter does not send their schemas) to
 * `DIR/mastra_agent_tools.json`. The committed copies in `fixtures/` are read by
 * `tests/test_mastra_trajectories.py`, which turns them into CodeAct trajectories; regenerate them
 * with `.venv/bin/python -m tests.test_mastra_trajectories --write`. Ids and times change on every
 * run; the spans, their names, attributes, inputs and outputs do not.
 */

import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { AGENT_ID, buildTracedAgent, flushTraces, greatestCommonDivisor } from "../src/agent.ts";

const OTLP_PATH = "/api/public/otel/v1/traces";
const MODEL = "scripted-toolcall-model";
const MAX_STEPS = 5;
const AGENT_SPAN = "invoke_agent GCD agent (slm-swap)";
const TOOL_SPAN = "execute_tool greatest_common_divisor";

interface ScriptedCall {
  name: string;
  arguments: Record<string, unknown>;
}

/** One model turn: text, tool calls, or both (words before the calls). */
interface ScriptedTurn {
  text?: string;
  calls?: ScriptedCall[];
}

const gcd = (a: unknown, b: unknown): ScriptedCall => ({ name: "greatest_common_divisor", arguments: { a, b } });

/**
 * The runs, by user request. A request gets its script's turn at the number of assistant turns
 * already in the conversation, so answers do not depend on the order requests arrive in.
 */
const SCRIPTS: Record<string, ScriptedTurn[]> = {
  // Two calls, the second on the first one's result, then the answer.
  "What is the GCD of 84, 126 and 210?": [
    { calls: [gcd(84, 126)] },
    { text: "GCD(84, 126) is 42; now with 210.", calls: [gcd(42, 210)] },
    { text: "The GCD of 84, 126 and 210 is 42." },
  ],
  // One call, then the answer.
  "What is the GCD of 48 and 18?": [{ calls: [gcd(48, 18)] }, { text: "The GCD of 48 and 18 is 6." }],
  // The first call fails Mastra's input validation (the tool does not run); the model corrects it.
  "What is the GCD of 12 and eighteen?": [
    { calls: [gcd(12, "eighteen")] },
    { calls: [gcd(12, 18)] },
    { text: "The GCD of 12 and 18 is 6." },
  ],
  // No tool call: not a multi-step run (the Python converter skips it and counts why).
  "Hello, what can you do?": [{ text: "I compute greatest common divisors." }],
};

interface ChatRequest {
  model: string;
  messages: { role: string; content?: unknown }[];
  tools?: unknown[];
  stream?: boolean;
}

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks).toString("utf-8")));
    request.on("error", reject);
  });
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (typeof address !== "object" || address === null) throw new Error("server has no port");
  return `http://127.0.0.1:${address.port}`;
}

/** The chat completion the script gives for this request (an Error when it has none). */
function scriptedCompletion(request: ChatRequest): object {
  if (request.stream) throw new Error("the scripted model answers non-streamed requests only");
  const user = request.messages.find((message) => message.role === "user");
  const script = SCRIPTS[String(user?.content)];
  const index = request.messages.filter((message) => message.role === "assistant").length;
  const turn = script?.[index];
  if (turn === undefined) throw new Error(`no scripted turn ${index} for ${JSON.stringify(user?.content)}`);
  const calls = (turn.calls ?? []).map((call, position) => ({
    id: `call_${index + 1}_${position + 1}`,
    type: "function",
    function: { name: call.name, arguments: JSON.stringify(call.arguments) },
  }));
  return {
    id: `chatcmpl-${index + 1}`,
    object: "chat.completion",
    created: 0,
    model: request.model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: turn.text ?? null, ...(calls.length > 0 ? { tool_calls: calls } : {}) },
        finish_reason: calls.length > 0 ? "tool_calls" : "stop",
      },
    ],
    usage: { prompt_tokens: 10 * (index + 1), completion_tokens: 5, total_tokens: 10 * (index + 1) + 5 },
  };
}

/** A scripted OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 that keeps every request. */
async function startScriptedModel(): Promise<{ server: Server; url: string; requests: ChatRequest[] }> {
  const requests: ChatRequest[] = [];
  const server = createServer(async (request, response) => {
    const body = JSON.parse(await readBody(request)) as ChatRequest;
    requests.push(body);
    try {
      response.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(scriptedCompletion(body)));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      response.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ error: { message } }));
    }
  });
  return { server, url: `${await listen(server)}/v1`, requests };
}

interface RecordedPost {
  path: string;
  contentType: string | undefined;
  authorization: string | undefined;
  body: string;
}

/** A stand-in for Langfuse on 127.0.0.1 that keeps every request and answers 200. */
async function startRecordingServer(): Promise<{ server: Server; url: string; posts: RecordedPost[] }> {
  const posts: RecordedPost[] = [];
  const server = createServer(async (request, response) => {
    const body = await readBody(request);
    posts.push({
      path: request.url ?? "",
      contentType: request.headers["content-type"],
      authorization: request.headers.authorization,
      body,
    });
    response.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  return { server, url: await listen(server), posts };
}

interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
}

interface ExportedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  attributes: Record<string, string | number | boolean | undefined>;
}

/** Every span of the OTLP/JSON export bodies, attributes as plain values. */
function exportedSpans(bodies: string[]): ExportedSpan[] {
  type Body = {
    resourceSpans?: {
      scopeSpans?: {
        spans?: { traceId: string; spanId: string; parentSpanId?: string; name: string; attributes?: { key: string; value: OtlpValue }[] }[];
      }[];
    }[];
  };
  const plain = (value: OtlpValue) =>
    value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : undefined) ?? value.doubleValue ?? value.boolValue;
  return bodies.flatMap((body) =>
    ((JSON.parse(body) as Body).resourceSpans ?? []).flatMap((resource) =>
      (resource.scopeSpans ?? []).flatMap((scope) =>
        (scope.spans ?? []).map((span) => ({
          traceId: span.traceId,
          spanId: span.spanId,
          parentSpanId: span.parentSpanId || undefined,
          name: span.name,
          attributes: Object.fromEntries((span.attributes ?? []).map((item) => [item.key, plain(item.value)])),
        })),
      ),
    ),
  );
}

describe("the example agent's Langfuse export (scripted model, recording server)", () => {
  let model: Awaited<ReturnType<typeof startScriptedModel>>;
  let langfuse: Awaited<ReturnType<typeof startRecordingServer>>;
  const answers: Record<string, string> = {};

  before(async () => {
    [model, langfuse] = await Promise.all([startScriptedModel(), startRecordingServer()]);
    const traced = buildTracedAgent({
      baseUrl: model.url,
      model: MODEL,
      apiKey: "not-needed",
      langfuseBaseUrl: langfuse.url,
      langfusePublicKey: "pk-lf-test",
      langfuseSecretKey: "sk-lf-test",
    });
    try {
      for (const request of Object.keys(SCRIPTS)) {
        const result = await traced.agent.generate(request, { maxSteps: MAX_STEPS, modelSettings: { temperature: 0 } });
        answers[request] = result.text;
      }
    } finally {
      await flushTraces(traced);
    }
    const out = process.env.SLM_SWAP_MASTRA_TRACES_OUT;
    if (out) {
      mkdirSync(out, { recursive: true });
      // One POST body per line, as received (the exporter's JSON has no raw newlines).
      const lines = langfuse.posts.map((post) => JSON.stringify(JSON.parse(post.body)));
      writeFileSync(join(out, "mastra_langfuse_export.jsonl"), lines.join("\n") + "\n");
      writeFileSync(join(out, "mastra_agent_tools.json"), JSON.stringify(model.requests[0]?.tools, null, 2) + "\n");
    }
  });

  after(() => {
    model?.server.close();
    langfuse?.server.close();
  });

  test("every run ends with the scripted final text, after the tool results went back to the model", () => {
    for (const [request, script] of Object.entries(SCRIPTS)) {
      // Mastra's `text` joins every step's text (words said before a call included).
      assert.equal(answers[request], script.map((turn) => turn.text ?? "").join(""), request);
    }
    assert.equal(model.requests.length, Object.values(SCRIPTS).flat().length);
    const toolMessages = model.requests.flatMap((request) => request.messages.filter((message) => message.role === "tool"));
    assert.ok(toolMessages.some((message) => message.content === '{"gcd":42}'), JSON.stringify(toolMessages));
    assert.ok(toolMessages.some((message) => String(message.content).includes("Tool input validation failed")));
  });

  test("the exporter posts OTLP/JSON to Langfuse's endpoint with the keys", () => {
    assert.ok(langfuse.posts.length >= 1);
    for (const post of langfuse.posts) {
      assert.equal(post.path, OTLP_PATH);
      assert.equal(post.contentType, "application/json");
      assert.equal(post.authorization, `Basic ${Buffer.from("pk-lf-test:sk-lf-test").toString("base64")}`);
    }
  });

  test("one trace per run: the agent span, its model calls and its tool executions with results", () => {
    const spans = exportedSpans(langfuse.posts.map((post) => post.body));
    const traces = new Map<string, ExportedSpan[]>();
    for (const span of spans) traces.set(span.traceId, [...(traces.get(span.traceId) ?? []), span]);
    assert.equal(traces.size, Object.keys(SCRIPTS).length);
    for (const traceSpans of traces.values()) {
      const roots = traceSpans.filter((span) => span.parentSpanId === undefined);
      assert.deepEqual(roots.map((span) => span.name), [AGENT_SPAN]);
      const agent = roots[0]?.attributes ?? {};
      assert.equal(agent["gen_ai.agent.id"], AGENT_ID);
      assert.equal(agent["gen_ai.tool.definitions"], '["greatest_common_divisor"]');
      const request = String(agent["langfuse.observation.input"]);
      const script = SCRIPTS[request];
      assert.ok(script, `unknown run ${request}`);

      const named = (name: string) => traceSpans.filter((span) => span.name === name);
      assert.equal(named(`chat ${MODEL}`).length, script.length, request);
      const steps = named("agent_step GCD agent (slm-swap)").map((span) => span.attributes);
      assert.equal(steps.length, script.length);
      const stepCalls = steps
        .sort((a, b) => Number(a["mastra.model_step.step_index"]) - Number(b["mastra.model_step.step_index"]))
        .map((step) => (JSON.parse(String(step["langfuse.observation.output"])) as { toolCalls: { args: unknown }[] }).toolCalls);
      assert.deepEqual(
        stepCalls.map((calls) => calls.map((call) => call.args)),
        script.map((turn) => (turn.calls ?? []).map((call) => call.arguments)),
      );

      const tools = named(TOOL_SPAN).map((span) => span.attributes);
      const scriptedCalls = script.flatMap((turn) => turn.calls ?? []);
      assert.deepEqual(
        tools.map((tool) => JSON.parse(String(tool["gen_ai.tool.call.arguments"]))),
        scriptedCalls.map((call) => call.arguments),
      );
      for (const tool of tools) {
        const args = JSON.parse(String(tool["gen_ai.tool.call.arguments"])) as { a: unknown; b: unknown };
        const result = JSON.parse(String(tool["gen_ai.tool.call.result"])) as { gcd?: number; error?: boolean };
        if (typeof args.b === "number") assert.deepEqual(result, { gcd: greatestCommonDivisor(Number(args.a), args.b) });
        else assert.equal(result.error, true);
        assert.match(String(tool["gen_ai.tool.call.id"]), /^call_\d+_1$/);
      }
    }
  });
});
