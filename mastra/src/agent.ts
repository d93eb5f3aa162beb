/**
 * An example Mastra agent whose model is the slm-swap Serve endpoint, with one tool and Langfuse
 * tracing.
 *
 * The tool is `greatest_common_divisor` with the signature it has in the toolcall data (same name,
 * description, parameter names, types and descriptions), so the request Serve rebuilds from
 * Mastra's OpenAI `tools` is close to what the toolcall adapter was trained on. The SLM was trained
 * for one call per request, so a run is one step: the model calls the tool, Mastra executes it, and
 * the run ends (`maxSteps: 1`) instead of asking the SLM to write prose about the result.
 *
 * Tracing follows Mastra's Langfuse integration: an `Observability` instance with a
 * `LangfuseExporter` (OTLP to `<LANGFUSE_BASE_URL>/api/public/otel/v1/traces`). Without
 * LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY the exporter disables itself and the agent runs
 * untraced. Spans are batched: call `flushTraces` before the process exits.
 */

import { Agent } from "@mastra/core/agent";
import { Mastra } from "@mastra/core/mastra";
import { createTool } from "@mastra/core/tools";
import { LangfuseExporter } from "@mastra/langfuse";
import { Observability } from "@mastra/observability";
import { z } from "zod";

import { DEFAULT_BASE_URL, trackModel } from "./client.ts";
import { templateText } from "./templates.ts";

export const AGENT_ID = "slm-swap-gcd-agent";

export interface AgentSettings {
  /** The endpoint's OpenAI base URL (default `SLM_SWAP_BASE_URL`, then http://127.0.0.1:8000/v1). */
  baseUrl: string;
  /** The served model (default `SLM_SWAP_MODEL`, then the toolcall adapter `slm-toolcall`). */
  model: string;
  /** The project's server needs none; any text satisfies the OpenAI-compatible provider. */
  apiKey: string;
  /** Langfuse host (LANGFUSE_BASE_URL, or the project's LANGFUSE_HOST); undefined: Langfuse Cloud. */
  langfuseBaseUrl: string | undefined;
  /** LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY; without both the exporter disables itself. */
  langfusePublicKey: string | undefined;
  langfuseSecretKey: string | undefined;
}

export function agentSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): AgentSettings {
  return {
    baseUrl: env.SLM_SWAP_BASE_URL ?? DEFAULT_BASE_URL,
    model: env.SLM_SWAP_MODEL ?? trackModel("toolcall"),
    apiKey: env.SLM_SWAP_API_KEY ?? "not-needed",
    langfuseBaseUrl: env.LANGFUSE_BASE_URL ?? env.LANGFUSE_HOST,
    langfusePublicKey: env.LANGFUSE_PUBLIC_KEY,
    langfuseSecretKey: env.LANGFUSE_SECRET_KEY,
  };
}

export function greatestCommonDivisor(a: number, b: number): number {
  let [x, y] = [Math.abs(a), Math.abs(b)];
  while (y !== 0) [x, y] = [y, x % y];
  return x;
}

/** The toolcall data's `greatest_common_divisor` (slm_swap/02_dataset/toolcall), defined with zod. */
export const gcdTool = createTool({
  id: "greatest_common_divisor",
  description: "Computes the greatest common divisor (GCD) of two non-negative integers.",
  inputSchema: z.object({
    a: z.number().int().describe("The first non-negative integer."),
    b: z.number().int().describe("The second non-negative integer."),
  }),
  outputSchema: z.object({ gcd: z.number().int() }),
  execute: async ({ a, b }) => ({ gcd: greatestCommonDivisor(a, b) }),
});

export function buildGcdAgent(settings: AgentSettings): Agent {
  return new Agent({
    id: AGENT_ID,
    name: "GCD agent (slm-swap)",
    // The instruction the teacher gets with native tools. Serve builds the SLM's prompt from the
    // request's tools and user text (the toolcall template), so this text does not reach the SLM.
    instructions: templateText("toolcall_native_system"),
    // Mastra's model router: an OpenAI-compatible endpoint by URL, no provider package needed.
    model: { id: `slm-swap/${settings.model}`, url: settings.baseUrl, apiKey: settings.apiKey },
    tools: { greatest_common_divisor: gcdTool },
  });
}

export interface TracedAgent {
  mastra: Mastra;
  agent: Agent;
  exporter: LangfuseExporter;
}

/** The agent registered in a Mastra instance whose observability exports to Langfuse. */
export function buildTracedAgent(settings: AgentSettings): TracedAgent {
  const exporter = new LangfuseExporter({
    baseUrl: settings.langfuseBaseUrl,
    publicKey: settings.langfusePublicKey,
    secretKey: settings.langfuseSecretKey,
  });
  const mastra = new Mastra({
    agents: { [AGENT_ID]: buildGcdAgent(settings) },
    observability: new Observability({
      configs: { langfuse: { serviceName: "slm-swap-mastra-demo", exporters: [exporter] } },
    }),
  });
  return { mastra, agent: mastra.getAgent(AGENT_ID), exporter };
}

/** Send the batched spans (Langfuse receives nothing from a short run without this). */
export async function flushTraces(traced: TracedAgent): Promise<void> {
  await traced.mastra.observability.shutdown();
}
