/** Python's JSON text in TypeScript: float repr, ints, escapes, and what cannot be written. */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  compactJson,
  JsonTextError,
  parseJson,
  PromptFormatError,
  PythonFloat,
  pythonFloatRepr,
  readableJson,
  renderTemplate,
  TemplateError,
  toolSignature,
} from "../src/index.ts";

test("floats are written as Python's repr writes them", () => {
  // Expected values are Python 3.11's repr() of the same doubles.
  const cases: [number, string][] = [
    [1e-5, "1e-05"],
    [0.0001, "0.0001"],
    [1e16, "1e+16"],
    [1e15, "1000000000000000.0"],
    [123456789012345.6, "123456789012345.6"],
    [0.1 + 0.2, "0.30000000000000004"],
    [5e-324, "5e-324"],
    [1.7976931348623157e308, "1.7976931348623157e+308"],
    [-2.5, "-2.5"],
    [100, "100.0"],
    [1.5e300, "1.5e+300"],
    [2.5e-8, "2.5e-08"],
    [-1e-7, "-1e-07"],
    [9999999999999998, "9999999999999998.0"],
    [1 / 3, "0.3333333333333333"],
    [-0, "-0.0"],
    [0, "0.0"],
  ];
  for (const [value, python] of cases) assert.equal(pythonFloatRepr(value), python, `repr(${value})`);
});

test("parseJson keeps Python's number types and compactJson writes them back unchanged", () => {
  const text = '{"a":1.0,"b":1,"c":-0.0,"d":1e-05,"e":9007199254740993,"f":[2.50,1E2],"g":"\\u00e9\\u2028\\u0001"}';
  const value = parseJson(text) as Record<string, unknown>;
  assert.ok(value.a instanceof PythonFloat);
  assert.equal(value.b, 1);
  assert.equal(value.e, 9007199254740993n);
  // Python: json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
  assert.equal(
    compactJson(value),
    '{"a":1.0,"b":1,"c":-0.0,"d":1e-05,"e":9007199254740993,"f":[2.5,100.0],"g":"é\u2028\\u0001"}',
  );
  assert.equal(readableJson({ x: [1, new PythonFloat(2)], y: null }), '{"x": [1, 2.0], "y": null}');
});

test("integral JavaScript numbers are ints; undefined is dropped as JSON.stringify drops it", () => {
  const value = { n: 1e21, m: 2.5, u: undefined, l: [undefined] };
  assert.equal(compactJson(value), '{"n":1000000000000000000000,"m":2.5,"l":[null]}');
});

test("values with no JSON form are errors naming where they are", () => {
  assert.throws(() => compactJson({ a: [Number.NaN] }), JsonTextError);
  assert.throws(() => compactJson({ when: new Date(0) }), /\$\.when: a Date object/);
  assert.throws(() => compactJson({ f: () => 1 }), /\$\.f: a function/);
});

test("templates render in one pass and reject missing or unknown placeholders", () => {
  const rendered = renderTemplate("tool_call_wrapper", { name: "{{arguments}}", arguments: "$& {{name}}" });
  assert.equal(rendered, '<tool_call name="{{arguments}}">$& {{name}}</tool_call>');
  assert.throws(() => renderTemplate("tool_call_wrapper", { name: "x" }), TemplateError);
  assert.throws(() => renderTemplate("tool_call_wrapper", { name: "x", arguments: "{}", extra: "" }), TemplateError);
  assert.throws(() => renderTemplate("no_such_template", {}), /no text template named 'no_such_template'/);
});

test("toolSignature normalises OpenAI tools and rejects what is not one", () => {
  const bare = { name: "f", description: "", parameters: { type: "object", properties: {} } };
  assert.deepEqual(toolSignature({ type: "function", function: { name: "f" } }), bare);
  assert.deepEqual(toolSignature(bare), bare);
  assert.throws(() => toolSignature({ type: "retrieval", name: "f" }), PromptFormatError);
  assert.throws(() => toolSignature({ name: "f", parameters: "x" }), /parameters must be a JSON Schema object/);
});
