/**
 * Prompt and chat-message building for both tracks, byte for byte as ray_app/prompts/builders.py
 * builds them (the fixture test compares the two on every committed test row).
 *
 * A tool signature is an OpenAI function object `{name, description, parameters}` with JSON Schema
 * parameters; an OpenAI `tools` entry (`{type: "function", function: {...}}`) is accepted too.
 */

import { compactJson, pythonFloatRepr, PythonFloat } from "./json_text.ts";
import { renderTemplate, templateText } from "./templates.ts";

export type Track = "structured" | "toolcall";
export const TRACKS: readonly Track[] = ["structured", "toolcall"];

export interface ToolSignature {
  name: string;
  description: string;
  parameters: Record<string, unknown>;
}

export interface ChatMessage {
  role: "system" | "user";
  content: string;
}

export class PromptFormatError extends Error {
  override name = "PromptFormatError";
}

const OPENAI_TOOL_NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof PythonFloat);
}

/** Python's truthiness, for the `x or default` expressions of builders.py. */
function pythonFalsy(value: unknown): boolean {
  if (value === null || value === undefined || value === false || value === "" || value === 0 || value === 0n) {
    return true;
  }
  if (value instanceof PythonFloat) return value.value === 0;
  if (Array.isArray(value)) return value.length === 0;
  return isRecord(value) && Object.keys(value).length === 0;
}

/** Python's `str()` of a JSON scalar (a `type` list may hold anything). */
function pythonStr(value: unknown, where: string): string {
  if (typeof value === "string") return value;
  if (value === null) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isInteger(value) ? BigInt(value).toString() : pythonFloatRepr(value);
  if (value instanceof PythonFloat) return pythonFloatRepr(value.value);
  throw new PromptFormatError(`${where}: a JSON Schema type must be a string, got ${compactJson(value)}`);
}

/** Normalise an OpenAI tool (`{type: "function", function: {...}}`) or a bare function to a signature. */
export function toolSignature(tool: unknown): ToolSignature {
  if (!isRecord(tool)) throw new PromptFormatError(`a tool must be a JSON object, got ${compactJson(tool ?? null)}`);
  const kind = "type" in tool ? tool.type : "function";
  const fn = kind === "function" ? ("function" in tool ? tool.function : tool) : undefined;
  if (!isRecord(fn) || typeof fn.name !== "string" || fn.name === "") {
    throw new PromptFormatError(
      `not an OpenAI function tool (needs function.name): ${compactJson(tool).slice(0, 200)}`,
    );
  }
  const parameters = pythonFalsy(fn.parameters) ? { type: "object", properties: {} } : fn.parameters;
  if (!isRecord(parameters)) {
    throw new PromptFormatError(`tool '${fn.name}': parameters must be a JSON Schema object`);
  }
  const description = pythonFalsy(fn.description) ? "" : (fn.description as string);
  return { name: fn.name, description, parameters };
}

/** The OpenAI `tools` entry for a signature (optionally under an OpenAI-safe alias). */
export function openaiTool(signature: ToolSignature, name?: string): Record<string, unknown> {
  return { type: "function", function: { ...signature, name: name ?? signature.name } };
}

/** Each tool name → a name OpenAI-style APIs accept (dots and slashes become `_`, collisions get `_2`…). */
export function openaiSafeToolNames(names: string[]): Map<string, string> {
  const aliases = new Map<string, string>();
  const taken = new Set(names.filter((name) => OPENAI_TOOL_NAME_PATTERN.test(name)));
  for (const name of names) {
    if (OPENAI_TOOL_NAME_PATTERN.test(name)) {
      aliases.set(name, name);
      continue;
    }
    // Python slices code points ([:60]); Array.from does too, where String.slice would cut UTF-16 units.
    const base = Array.from(name.replace(/[^A-Za-z0-9_-]/gu, "_")).slice(0, 60).join("") || "tool";
    let alias = base;
    for (let suffix = 2; taken.has(alias); suffix += 1) alias = `${base}_${suffix}`;
    taken.add(alias);
    aliases.set(name, alias);
  }
  return aliases;
}

export function jsonTypeName(schema: unknown, where = "schema"): string {
  if (!isRecord(schema)) throw new PromptFormatError(`${where}: a parameter schema must be a JSON object`);
  const kind = schema.type;
  if (Array.isArray(kind)) return kind.map((item) => pythonStr(item, `${where}.type`)).join(" or ");
  if (kind === "array" && isRecord(schema.items) && !pythonFalsy(schema.items)) {
    return `array of ${jsonTypeName(schema.items, `${where}.items`)}`;
  }
  if (!pythonFalsy(kind)) return pythonStr(kind, `${where}.type`);
  if ("anyOf" in schema) {
    const options = schema.anyOf;
    if (!Array.isArray(options)) throw new PromptFormatError(`${where}.anyOf must be a list of schemas`);
    return options.map((option, index) => jsonTypeName(option, `${where}.anyOf[${index}]`)).join(" or ");
  }
  return "any";
}

/** `{param: "integer"}`, with " (optional)" for parameters not in `required`. */
export function parameterTypes(signature: ToolSignature): Record<string, string> {
  const where = `tool '${signature.name}' parameters`;
  const { properties = {}, required = [] } = signature.parameters;
  if (!isRecord(properties)) throw new PromptFormatError(`${where}.properties must be a JSON object`);
  if (!Array.isArray(required)) throw new PromptFormatError(`${where}.required must be a list of names`);
  const requiredNames = new Set(required);
  const described: Record<string, string> = {};
  for (const [name, schema] of Object.entries(properties)) {
    const typeName = jsonTypeName(schema, `${where}.properties.${name}`);
    described[name] = requiredNames.has(name) ? typeName : `${typeName} (optional)`;
  }
  return described;
}

/** Instruction to return the named tool's arguments as one JSON object, then the user text. */
export function structuredPrompt(signature: ToolSignature, query: string): string {
  return renderTemplate("structured", {
    tool_name: signature.name,
    parameters: compactJson(parameterTypes(signature)),
    query,
  });
}

/** Instruction + one compact JSON signature per line + the user text. */
export function toolcallPrompt(signatures: ToolSignature[], query: string): string {
  if (signatures.length === 0) throw new PromptFormatError("a toolcall prompt needs at least one tool signature");
  const toolsBlock = signatures.map((signature) => compactJson(signature)).join("\n");
  return renderTemplate("toolcall", { tools: toolsBlock, query });
}

/** The chat messages every engine, the trainer and the server send for a row's prompt. */
export function chatMessages(prompt: string): ChatMessage[] {
  return [
    { role: "system", content: templateText("system") },
    { role: "user", content: prompt },
  ];
}

/** What the client sends for one request on a track: the tool(s) may be OpenAI tools or bare functions. */
export type TrackRequest =
  | { track: "structured"; tool: unknown; query: string }
  | { track: "toolcall"; tools: unknown[]; query: string };

export function requestSignatures(request: TrackRequest): ToolSignature[] {
  return request.track === "structured" ? [toolSignature(request.tool)] : request.tools.map(toolSignature);
}

/** The prompt evaluation and training used for the same inputs. */
export function trackPrompt(request: TrackRequest): string {
  const signatures = requestSignatures(request);
  return request.track === "structured"
    ? structuredPrompt(signatures[0] as ToolSignature, request.query)
    : toolcallPrompt(signatures, request.query);
}

export function trackMessages(request: TrackRequest): ChatMessage[] {
  return chatMessages(trackPrompt(request));
}
