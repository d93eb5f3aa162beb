/**
 * JSON text exactly as the project's Python writes it (ray_app/json_text.py), so prompts built here
 * have the same bytes as the ones the SLM was evaluated and trained on.
 *
 * Python's `json.dumps(value, separators=(",", ":"), ensure_ascii=False)` differs from
 * `JSON.stringify` in how it writes numbers: a Python float always shows it is a float (`1.0`,
 * `1e-05`, `1e+16`) and a Python int has any number of digits. JavaScript numbers cannot say which
 * they were, so `parseJson` keeps that information (`PythonFloat` for literals with `.`/`e`/`E`,
 * `bigint` for integers beyond 2^53) and the serialisers below write it back the way Python does.
 * Strings are escaped as Python escapes them with ensure_ascii=False, which is what `JSON.stringify`
 * does for a string (only `"`, `\` and control characters; non-ASCII text stays as it is).
 *
 * One thing JavaScript cannot mirror: an object's integer-like keys ("0", "42") are always
 * iterated first, whatever their order in the source. Tool schemas practically never use such
 * property names; where one does, the key order (and so the prompt) can differ from Python's.
 */

/** A number Python holds as a float: serialised with Python's `repr` (`1.0`, `1e-05`, `-0.0`). */
export class PythonFloat {
  constructor(readonly value: number) {}
}

export type JsonValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | PythonFloat
  | JsonValue[]
  | { [key: string]: JsonValue };

export class JsonTextError extends Error {
  override name = "JsonTextError";
}

/** Python's `repr(float)`: shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16. */
export function pythonFloatRepr(value: number): string {
  if (!Number.isFinite(value)) {
    throw new JsonTextError(`${value} is not valid JSON (Python would write NaN/Infinity, which no parser reads)`);
  }
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  // toExponential() with no argument gives the shortest digits that round-trip, as Python's repr does.
  const [mantissa, exponentText] = value.toExponential().split("e") as [string, string];
  const sign = mantissa.startsWith("-") ? "-" : "";
  const digits = mantissa.replace("-", "").replace(".", "");
  const exponent = Number(exponentText);
  if (exponent < -4 || exponent >= 16) {
    const significand = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    const exponentDigits = String(Math.abs(exponent)).padStart(2, "0");
    return `${sign}${significand}e${exponent < 0 ? "-" : "+"}${exponentDigits}`;
  }
  if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  const integerPart = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  return `${sign}${integerPart}.${digits.slice(exponent + 1) || "0"}`;
}

function numberText(value: number, path: string): string {
  if (!Number.isFinite(value)) throw new JsonTextError(`${path}: ${value} is not valid JSON`);
  // An integral JavaScript number is what JSON.parse makes of a Python int: write all its digits.
  if (Number.isInteger(value)) return BigInt(value).toString();
  return pythonFloatRepr(value);
}

function isPlainObject(value: object): value is Record<string, unknown> {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function serialise(value: unknown, itemSeparator: string, keySeparator: string, path: string): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "string":
      return JSON.stringify(value);
    case "number":
      return numberText(value, path);
    case "bigint":
      return value.toString();
    case "object":
      break;
    default:
      throw new JsonTextError(`${path}: a ${typeof value} has no JSON form`);
  }
  if (value instanceof PythonFloat) return pythonFloatRepr(value.value);
  if (Array.isArray(value)) {
    // An undefined array item is sent as null by JSON.stringify, so Python would see null.
    const items = value.map((item, index) =>
      item === undefined ? "null" : serialise(item, itemSeparator, keySeparator, `${path}[${index}]`),
    );
    return `[${items.join(itemSeparator)}]`;
  }
  if (!isPlainObject(value)) {
    throw new JsonTextError(`${path}: a ${value.constructor?.name ?? "non-plain"} object has no JSON form here`);
  }
  const members: string[] = [];
  for (const [key, item] of Object.entries(value)) {
    // An undefined property is left out by JSON.stringify, so Python would never see the key.
    if (item === undefined) continue;
    const itemText = serialise(item, itemSeparator, keySeparator, `${path}.${key}`);
    members.push(`${JSON.stringify(key)}${keySeparator}${itemText}`);
  }
  return `{${members.join(itemSeparator)}}`;
}

/** `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`: prompts' tool signatures and parameter types. */
export function compactJson(value: unknown): string {
  return serialise(value, ",", ":", "$");
}

/** `json.dumps(value, ensure_ascii=False)`: one line with ", " and ": " (the wrapper's arguments). */
export function readableJson(value: unknown): string {
  return serialise(value, ", ", ": ", "$");
}

interface ReviverContext {
  source?: string;
}

/**
 * `json.loads` with Python's number types kept: `1.0` → PythonFloat(1), 9007199254740993 → bigint.
 * Uses JSON.parse's source-text access (Node >= 21); NaN/Infinity literals are rejected as by
 * `strict_json_loads`, since JSON.parse never accepts them.
 */
export function parseJson(text: string): JsonValue {
  const reviver = function (this: unknown, _key: string, value: unknown, context?: ReviverContext): unknown {
    if (typeof value !== "number") return value;
    const source = context?.source;
    if (source === undefined) {
      throw new JsonTextError("JSON.parse gave no source text for a number; run on Node >= 22");
    }
    if (/[.eE]/.test(source)) return new PythonFloat(value);
    return Number.isSafeInteger(value) ? value : BigInt(source);
  };
  return JSON.parse(text, reviver as (key: string, value: unknown) => unknown) as JsonValue;
}
