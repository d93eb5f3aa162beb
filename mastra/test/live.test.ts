/**
 * A live call: the client against a real Serve endpoint started here on 127.0.0.1.
 *
 * The model is a tiny random Llama with the demo SLM's tokenizer (`python -m tests.tiny_model`):
 * its text is meaningless, but every step is real (Ray Serve, the chat template, greedy generate,
 * the OpenAI response). The adapter root is an empty folder, so the endpoint serves `slm` only.
 * The token counts prove the server tokenized exactly the messages Python builds for the same
 * committed row. The example Mastra agent runs against the same endpoint, with its Langfuse
 * exporter pointed at a recording server here. Skipped, with the reason, when the project's
 * Python venv does not exist.
 */

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

import { AGENT_ID, buildTracedAgent, flushTraces } from "../src/agent.ts";
import { BASE_MODEL, parseJson, SlmClient, SlmEndpointError, type TrackRequest } from "../src/index.ts";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const PYTHON = join(REPO_ROOT, ".venv", "bin", "python");
const READY_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 60_000; // Ray Serve's graceful shutdown, before the process group is killed
const MAX_TOKENS = 8;

const skip = existsSync(PYTHON) ? false : `${PYTHON} does not exist: run \`make install\` in ${REPO_ROOT} first`;

/** The inputs of one committed test row per track, as the fixture holds them. */
function fixtureRequests(): Record<string, TrackRequest> {
  const text = readFileSync(new URL("./fixtures/python_messages.jsonl", import.meta.url), "utf-8");
  const records = text
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => parseJson(line) as Record<string, unknown>);
  const pick = (id: string) => {
    const record = records.find((candidate) => candidate.id === id);
    if (record === undefined) throw new Error(`fixture has no row ${id}`);
    return record as unknown as TrackRequest;
  };
  const ids = ["structured/test.jsonl:1", "toolcall/test.jsonl:1"];
  return Object.fromEntries(ids.map((id) => [id, pick(id)]));
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address ? address.port : undefined;
      probe.close(() => (port ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}

/** Run the project's Python from the repository root; its stdout, or an error with its stderr. */
function runPython(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code, signal) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${PYTHON} ${args.join(" ")} failed (${code ?? signal}):\n${stderr}`));
    });
  });
}

/** Prompt tokens of the committed rows' Python-built chat messages, counted as the server counts them. */
async function pythonPromptTokens(modelDir: string, rowIds: string[]): Promise<Record<string, number>> {
  const script = `
import json, sys
from transformers import AutoTokenizer
from ray_app.data.rows import read_split
from ray_app.engines.slm import prompt_ids
from ray_app.prompts import chat_messages
model_dir, row_ids = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
counts = {}
for row_id in row_ids:
    path, line = row_id.rsplit(":", 1)
    row = read_split(f"slm_swap/02_dataset/{path}", path.split("/")[0])[int(line) - 1]
    counts[row_id] = len(prompt_ids(tokenizer, chat_messages(row.prompt)))
print(json.dumps(counts))
`;
  return JSON.parse(await runPython(["-c", script, modelDir, JSON.stringify(rowIds)])) as Record<string, number>;
}

async function waitUntilReady(baseUrl: string, server: ChildProcess, logPath: string): Promise<void> {
  const healthUrl = baseUrl.replace(/\/v1$/, "/health");
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (server.exitCode !== null || server.signalCode !== null) {
      const status = server.exitCode ?? server.signalCode;
      throw new Error(`the server exited (${status}) before it was ready:\n${logTail(logPath)}`);
    }
    try {
      const response = await fetch(healthUrl, { signal: AbortSignal.timeout(5_000) });
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`the server was not ready within ${READY_TIMEOUT_MS / 1000} s:\n${logTail(logPath)}`);
}

function logTail(logPath: string): string {
  return existsSync(logPath) ? readFileSync(logPath, "utf-8").slice(-3000) : "(no server log)";
}

function killGroup(server: ChildProcess, signal: NodeJS.Signals): void {
  try {
    if (server.pid !== undefined) process.kill(-server.pid, signal);
  } catch {
    // the group is already gone
  }
}

/** SIGTERM lets `slm-swap serve` shut Ray Serve down; whatever is left of its group is then killed. */
async function stopServer(server: ChildProcess): Promise<void> {
  if (server.exitCode === null && server.signalCode === null) {
    let timer: NodeJS.Timeout | undefined;
    const exited = new Promise<void>((resolve) => server.once("exit", () => resolve()));
    const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_TIMEOUT_MS)));
    server.kill("SIGTERM");
    await Promise.race([exited, timedOut]);
    clearTimeout(timer); // a pending timer would keep the test process alive
  }
  killGroup(server, "SIGKILL");
}

interface RecordedPost {
  path: string;
  authorization: string | undefined;
  body: string;
}

/** A stand-in for Langfuse's OTLP endpoint on 127.0.0.1 that keeps every POST. */
async function startRecordingServer(): Promise<{ server: Server; url: string; posts: RecordedPost[] }> {
  const posts: RecordedPost[] = [];
  const server = createHttpServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      posts.push({
        path: request.url ?? "",
        authorization: request.headers.authorization,
        body: Buffer.concat(chunks).toString("utf-8"),
      });
      response.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (typeof address !== "object" || address === null) throw new Error("recording server has no port");
  return { server, url: `http://127.0.0.1:${address.port}`, posts };
}

/** Span names in OTLP JSON export bodies. */
function spanNames(posts: RecordedPost[]): string[] {
  type OtlpBody = { resourceSpans?: { scopeSpans?: { spans?: { name: string }[] }[] }[] };
  return posts.flatMap((post) =>
    ((JSON.parse(post.body) as OtlpBody).resourceSpans ?? []).flatMap((resourceSpans) =>
      (resourceSpans.scopeSpans ?? []).flatMap((scopeSpans) => (scopeSpans.spans ?? []).map((span) => span.name)),
    ),
  );
}

describe("live calls against a Serve endpoint on a tiny model", { skip }, () => {
  let workDir = "";
  let server: ChildProcess | undefined;
  let client: SlmClient;
  let expectedPromptTokens: Record<string, number> = {};
  const requests = fixtureRequests();
  const killOnExit = () => server && killGroup(server, "SIGKILL");

  before(
    async () => {
      workDir = mkdtempSync(join(tmpdir(), "slm-swap-mastra-live-"));
      const modelDir = join(workDir, "tiny-model");
      const adapterRoot = join(workDir, "adapters");
      mkdirSync(adapterRoot);
      await runPython(["-m", "tests.tiny_model", modelDir]);
      const port = await freePort();
      const logPath = join(workDir, "serve.log");
      const log = openSync(logPath, "w");
      const environment = { ...process.env };
      delete environment.RAY_ADDRESS; // always a fresh embedded Ray, never someone's cluster
      // detached: the server leads its own process group, so stopping it also stops Ray's processes.
      server = spawn(
        PYTHON,
        ["-m", "ray_app", "serve", "--model-path", modelDir, "--adapter-root", adapterRoot,
         "--host", "127.0.0.1", "--port", String(port), "--precision", "fp32"],
        { cwd: REPO_ROOT, env: environment, detached: true, stdio: ["ignore", log, log] },
      );
      closeSync(log);
      process.once("exit", killOnExit);
      client = new SlmClient({ baseUrl: `http://127.0.0.1:${port}/v1`, timeoutMs: 60_000 });
      // Counted while the server starts.
      [expectedPromptTokens] = await Promise.all([
        pythonPromptTokens(modelDir, Object.keys(requests)),
        waitUntilReady(client.baseUrl, server, logPath),
      ]);
    },
    { timeout: READY_TIMEOUT_MS + 120_000 },
  );

  after(
    async () => {
      if (server !== undefined) await stopServer(server);
      process.removeListener("exit", killOnExit);
      if (workDir) rmSync(workDir, { recursive: true, force: true });
    },
    { timeout: STOP_TIMEOUT_MS + 10_000 },
  );

  test("the endpoint serves the base model only (no adapters in its adapter root)", async () => {
    assert.deepEqual(await client.models(), [BASE_MODEL]);
  });

  for (const [rowId, request] of Object.entries(requests)) {
    test(`${rowId}: raw text and token usage for the messages Python builds`, async () => {
      const answer = await client.complete(request, { model: BASE_MODEL, maxTokens: MAX_TOKENS });
      assert.equal(typeof answer.text, "string");
      assert.equal(answer.model, BASE_MODEL);
      assert.ok(["stop", "length", "tool_calls"].includes(String(answer.finishReason)), `${answer.finishReason}`);
      assert.equal(answer.usage.promptTokens, expectedPromptTokens[rowId]);
      assert.ok(answer.usage.completionTokens >= 1 && answer.usage.completionTokens <= MAX_TOKENS);
      assert.ok(answer.latencyMs > 0);
    });
  }

  test("the example Mastra agent is served and its trace reaches Langfuse's OTLP endpoint", async () => {
    const langfuse = await startRecordingServer();
    try {
      const traced = buildTracedAgent({
        baseUrl: client.baseUrl,
        model: BASE_MODEL,
        apiKey: "not-needed",
        langfuseBaseUrl: langfuse.url,
        langfusePublicKey: "pk-lf-test",
        langfuseSecretKey: "sk-lf-test",
      });
      assert.equal(traced.agent.id, AGENT_ID);
      // The tiny model's text is random, so it (almost surely) calls no tool; the run must still complete.
      const result = await traced.agent.generate("What is the GCD of 84 and 126?", {
        maxSteps: 1,
        modelSettings: { temperature: 0, maxOutputTokens: MAX_TOKENS },
      });
      assert.equal(typeof result.text, "string");
      assert.ok(["stop", "length", "tool-calls"].includes(String(result.finishReason)), `${result.finishReason}`);
      await flushTraces(traced);

      const exports = langfuse.posts.filter((post) => post.path === "/api/public/otel/v1/traces");
      assert.ok(exports.length >= 1, `no OTLP export; posts: ${langfuse.posts.map((post) => post.path).join(", ")}`);
      assert.equal(exports[0]?.authorization, `Basic ${Buffer.from("pk-lf-test:sk-lf-test").toString("base64")}`);
      const names = spanNames(exports);
      assert.ok(names.includes("invoke_agent GCD agent (slm-swap)"), names.join(", "));
      assert.ok(names.includes(`chat ${BASE_MODEL}`), names.join(", "));
    } finally {
      langfuse.server.close();
    }
  });

  test("the agent streams over SSE (Mastra reads the deltas natively): the same text as generate", async () => {
    const settings = {
      baseUrl: client.baseUrl,
      model: BASE_MODEL,
      apiKey: "not-needed",
      langfuseBaseUrl: undefined,
      langfusePublicKey: undefined,
      langfuseSecretKey: undefined,
    };
    const options = { maxSteps: 1, modelSettings: { temperature: 0, maxOutputTokens: MAX_TOKENS } };
    const traced = buildTracedAgent(settings);
    try {
      const stream = await traced.agent.stream("What is the GCD of 84 and 126?", options);
      const pieces: string[] = [];
      for await (const piece of stream.textStream) pieces.push(piece);
      const generated = await traced.agent.generate("What is the GCD of 84 and 126?", options);
      // (The tiny model's answer here is whitespace, which the server holds until the end; that text
      // goes out token by token is tested in Python, tests/test_serve.py and test_agent_requests.py.)
      assert.ok(pieces.length >= 1);
      assert.equal(pieces.join(""), await stream.text);
      assert.equal(await stream.text, generated.text); // greedy: streamed or not, the same answer
    } finally {
      await flushTraces(traced);
    }
  });

  test("asking for an adapter that is not installed is a 404 naming the served models", async () => {
    const request = requests["toolcall/test.jsonl:1"] as TrackRequest;
    await assert.rejects(client.complete(request, { maxTokens: MAX_TOKENS }), (error: unknown) => {
      assert.ok(error instanceof SlmEndpointError);
      assert.equal(error.status, 404);
      assert.match(error.message, /'slm-toolcall' is not served here; served models: slm/);
      return true;
    });
  });
});
