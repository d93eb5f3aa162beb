/**
 * The toolcall answer format, `<tool_call name="TOOL">{json args}</tool_call>`, as
 * ray_app/prompts/tool_call_format.py writes it: an answer that came back as OpenAI `tool_calls`
 * is turned into the same wrapper text the evaluation scores.
 */

import { compactJson, JsonTextError, parseJson, PythonFloat, readableJson } from "./json_text.ts";
import { openaiSafeToolNames } from "./prompts.ts";
import { renderTemplate } from "./templates.ts";

export class ToolCallFormatError extends Error {
  override name = "ToolCallFormatError";
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof PythonFloat);
}

/** One call in the project's wrapper (the gold completion format). */
export function formatToolCall(name: string, args: unknown): string {
  if (!isRecord(args)) {
    const kind = Array.isArray(args) ? "list" : args === null ? "NoneType" : typeof args;
    throw new ToolCallFormatError(`arguments of tool '${name}' must be a JSON object, got ${kind}`);
  }
  if (name === "" || /["<>]/.test(name)) {
    throw new ToolCallFormatError(`tool name '${name}' must be non-empty and contain no quotes or angle brackets`);
  }
  return renderTemplate("tool_call_wrapper", { name, arguments: readableJson(args) });
}

function nameText(value: unknown): string {
  if (value === undefined || value === null || value === false || value === "" || value === 0) return "";
  return typeof value === "string" ? value : compactJson(value);
}

/**
 * OpenAI `tool_calls` as the project's wrapper(s), one per line, under the tools' real names
 * (a call made under an OpenAI-safe alias, `crm_search` for `crm.search`, is mapped back).
 * Arguments that are not a JSON object stay raw inside the wrapper, so the answer is scored invalid
 * instead of this function hiding the mistake; so do two or more calls.
 */
export function toolCallsText(toolCalls: unknown[], toolNames: string[]): string {
  const realNameOfAlias = new Map([...openaiSafeToolNames(toolNames)].map(([real, alias]) => [alias, real]));
  const wrappers = toolCalls.map((rawCall) => {
    const call = isRecord(rawCall) ? rawCall : {};
    const fn = isRecord(call.function) ? call.function : call;
    const calledName = nameText(fn.name);
    const name = realNameOfAlias.get(calledName) ?? calledName;
    const args = "arguments" in fn ? fn.arguments : {};
    const raw = typeof args === "string" ? args : compactJson(args);
    try {
      return formatToolCall(name, raw.trim() ? parseJson(raw) : {});
    } catch (error) {
      const expected =
        error instanceof SyntaxError || error instanceof JsonTextError || error instanceof ToolCallFormatError;
      if (!expected) throw error;
      return renderTemplate("tool_call_wrapper", { name, arguments: raw });
    }
  });
  return wrappers.join("\n");
}

/** The text for an assistant message: its tool calls as wrappers, else its content. */
export function answerText(content: string | null | undefined, toolCalls: unknown[], toolNames: string[]): string {
  if (toolCalls.length > 0) return toolCallsText(toolCalls, toolNames);
  return content ?? "";
}
