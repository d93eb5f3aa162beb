/**
 * A thin client for the slm-swap Serve endpoint: it builds the same chat messages the evaluation
 * built for a track's inputs, asks the track's adapter (`slm-structured`, `slm-toolcall`) or the
 * base model (`slm`), and returns the raw answer text the evaluation would have scored.
 */

import { answerText } from "./tool_call_format.ts";
import { requestSignatures, trackMessages, type Track, type TrackRequest } from "./prompts.ts";

export const DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1";
/** The base SLM without an adapter. */
export const BASE_MODEL = "slm";

/** The model name Serve gives a track's adapter (`<adapter-root>/adapter_<track>/`). */
export function trackModel(track: Track): string {
  return `slm-${track}`;
}

export interface SlmClientOptions {
  /** The endpoint's OpenAI base URL; default `SLM_SWAP_BASE_URL`, then http://127.0.0.1:8000/v1. */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer`; default `SLM_SWAP_API_KEY` (needed when `slm-swap serve` has keys). */
  apiKey?: string;
  /** Per request, milliseconds (default 120 000: a CPU-served SLM is slow). */
  timeoutMs?: number;
}

export interface CompleteOptions {
  /** Default: the track's adapter; pass BASE_MODEL for the base SLM. */
  model?: string;
  /** Default 256, as the evaluation's default. */
  maxTokens?: number;
}

export interface SlmAnswer {
  /** The raw text: `content`, or OpenAI `tool_calls` rebuilt as the project's wrapper text. */
  text: string;
  model: string;
  finishReason: string | null;
  usage: { promptTokens: number; completionTokens: number };
  latencyMs: number;
}

export class SlmEndpointError extends Error {
  override name = "SlmEndpointError";
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }
}

interface ChatCompletion {
  model?: string;
  choices?: { message?: { content?: string | null; tool_calls?: unknown[] }; finish_reason?: string | null }[];
  usage?: { prompt_tokens?: number; completion_tokens?: number };
}

export class SlmClient {
  readonly baseUrl: string;
  private readonly apiKey: string | undefined;
  private readonly timeoutMs: number;

  constructor(options: SlmClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? process.env.SLM_SWAP_BASE_URL ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    this.apiKey = options.apiKey ?? process.env.SLM_SWAP_API_KEY;
    this.timeoutMs = options.timeoutMs ?? 120_000;
  }

  /** Answer one track request with the messages the evaluation used; greedy (temperature 0). */
  async complete(request: TrackRequest, options: CompleteOptions = {}): Promise<SlmAnswer> {
    const model = options.model ?? trackModel(request.track);
    const body = {
      model,
      messages: trackMessages(request),
      max_tokens: options.maxTokens ?? 256,
      temperature: 0,
    };
    const started = performance.now();
    const completion = (await this.post("/chat/completions", body)) as ChatCompletion;
    const latencyMs = performance.now() - started;
    const choice = completion.choices?.[0];
    if (choice?.message === undefined || completion.usage === undefined) {
      throw new SlmEndpointError(`${this.baseUrl}/chat/completions answered without choices[0].message or usage`);
    }
    const toolNames = requestSignatures(request).map((signature) => signature.name);
    return {
      text: answerText(choice.message.content, choice.message.tool_calls ?? [], toolNames),
      model: completion.model ?? model,
      finishReason: choice.finish_reason ?? null,
      usage: {
        promptTokens: completion.usage.prompt_tokens ?? 0,
        completionTokens: completion.usage.completion_tokens ?? 0,
      },
      latencyMs,
    };
  }

  /** The model names the endpoint serves (`slm` plus `slm-<track>` per installed adapter). */
  async models(): Promise<string[]> {
    const listing = (await this.request("GET", "/models")) as { data?: { id: string }[] };
    return (listing.data ?? []).map((model) => model.id);
  }

  private post(path: string, body: unknown): Promise<unknown> {
    return this.request("POST", path, body);
  }

  private async request(method: "GET" | "POST", path: string, body?: unknown): Promise<unknown> {
    const url = `${this.baseUrl}${path}`;
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    let response: Response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.timeoutMs),
      });
    } catch (error) {
      const cause = (error as { cause?: { message?: string } }).cause?.message ?? (error as Error).message;
      throw new SlmEndpointError(`${method} ${url} failed: ${cause}; is the endpoint running (slm-swap serve)?`);
    }
    const text = await response.text();
    if (!response.ok) {
      let detail = text.slice(0, 500);
      try {
        detail = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? detail;
      } catch {
        // not a JSON error body: keep the text
      }
      const hint = response.status === 401 ? ` (set SLM_SWAP_API_KEY to a key the server accepts)` : "";
      throw new SlmEndpointError(`${method} ${url} answered ${response.status}: ${detail}${hint}`, response.status);
    }
    try {
      return JSON.parse(text);
    } catch {
      const excerpt = text.slice(0, 200);
      throw new SlmEndpointError(`${method} ${url} answered ${response.status} with non-JSON text: ${excerpt}`);
    }
  }
}
