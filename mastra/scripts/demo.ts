/**
 * `npm run demo`: the example Mastra agent against a running Serve endpoint.
 *
 * Sends one request in the toolcall data's style, lets Mastra execute the tool the SLM called, and
 * prints the call (tool name + arguments) and the tool's result. Environment: SLM_SWAP_BASE_URL
 * (default http://127.0.0.1:8000/v1), SLM_SWAP_MODEL (default slm-toolcall), SLM_SWAP_API_KEY (sent as
 * the OpenAI API key, `Authorization: Bearer`; needed when the server was started with keys),
 * SLM_SWAP_DEMO_REQUEST, SLM_SWAP_TOOL_CHOICE (required, the default: the model must call a tool, and
 * with `slm-swap serve --constrained auto`, the server's default, the call always fits the tool's
 * schema; that is the configuration the report measures as `slm-adapter-constrained`, where every
 * toolcall row is answered with one call. auto: the model may answer in words instead, as the free
 * `slm-adapter` configuration; `make demo`'s 40-row adapter does for most requests), and the
 * Langfuse variables (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_BASE_URL).
 * `npm run demo -- --stream` uses `agent.stream` (SSE with tool-call deltas) instead of `generate`.
 * Exits 1 when the model answered without a tool call.
 */

import type { ToolCallChunk, ToolResultChunk } from "@mastra/core/stream";

import { agentSettingsFromEnv, buildTracedAgent, flushTraces } from "../src/agent.ts";

type ToolCall = Pick<ToolCallChunk, "payload">;
type ToolResult = Pick<ToolResultChunk, "payload">;

const DEFAULT_REQUEST = "What is the GCD of 84 and 126?";
const TOOL_CHOICES = ["required", "auto"] as const;
type DemoToolChoice = (typeof TOOL_CHOICES)[number];

function toolChoiceFromEnv(value: string | undefined): DemoToolChoice {
  const choice = value ?? "required";
  if (!(TOOL_CHOICES as readonly string[]).includes(choice)) {
    throw new Error(`SLM_SWAP_TOOL_CHOICE must be required or auto, got ${JSON.stringify(choice)}`);
  }
  return choice as DemoToolChoice;
}

async function main(): Promise<number> {
  const settings = agentSettingsFromEnv();
  const request = process.env.SLM_SWAP_DEMO_REQUEST ?? DEFAULT_REQUEST;
  const toolChoice = toolChoiceFromEnv(process.env.SLM_SWAP_TOOL_CHOICE);
  const tracing = settings.langfusePublicKey && settings.langfuseSecretKey;
  const keyNote = process.env.SLM_SWAP_API_KEY ? "API key from SLM_SWAP_API_KEY" : "no API key (SLM_SWAP_API_KEY unset)";
  console.log(`endpoint ${settings.baseUrl}, model ${settings.model}, tool choice ${toolChoice}, ${keyNote}`);
  console.log(
    tracing
      ? `Langfuse tracing on (${settings.langfuseBaseUrl ?? "https://cloud.langfuse.com"})`
      : "Langfuse tracing off (set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY to send traces)",
  );
  console.log(`request: ${request}`);

  const traced = buildTracedAgent(settings);
  try {
    // One step: the SLM calls the tool, Mastra executes it, the run ends.
    const options = { maxSteps: 1, modelSettings: { temperature: 0 }, toolChoice };
    let result: { text: string; finishReason: string | undefined; toolCalls: ToolCall[]; toolResults: ToolResult[] };
    if (process.argv.includes("--stream")) {
      const stream = await traced.agent.stream(request, options);
      for await (const piece of stream.textStream) process.stdout.write(`streamed text: ${piece}\n`);
      result = {
        text: await stream.text,
        finishReason: await stream.finishReason,
        toolCalls: await stream.toolCalls,
        toolResults: await stream.toolResults,
      };
      console.log("(answer streamed over SSE)");
    } else {
      result = await traced.agent.generate(request, options);
    }
    if (result.toolCalls.length === 0) {
      console.log(`the model answered without a tool call (finish reason ${result.finishReason}): ${result.text}`);
      return 1;
    }
    for (const call of result.toolCalls) {
      console.log(`SLM tool call: ${call.payload.toolName} ${JSON.stringify(call.payload.args)}`);
    }
    for (const toolResult of result.toolResults) {
      const { toolName, result: output, isError } = toolResult.payload;
      console.log(`tool ${isError ? "error" : "result"}: ${toolName} → ${JSON.stringify(output)}`);
    }
    return result.toolResults.some((toolResult) => toolResult.payload.isError) ? 1 : 0;
  } finally {
    await flushTraces(traced);
  }
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    const message = error instanceof Error ? error.message : String(error);
    const unauthorized = /\b401\b|invalid_api_key|API key/i.test(message);
    console.error(`demo failed: ${message}${unauthorized ? " (set SLM_SWAP_API_KEY to a key the server accepts)" : ""}`);
    process.exit(1);
  },
);
