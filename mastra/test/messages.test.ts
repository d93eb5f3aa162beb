/**
 * Message building is byte-identical to Python's on every committed test row.
 *
 * fixtures/python_messages.jsonl is written by tests/test_mastra_fixtures.py (which fails when it
 * is stale): per row, the inputs and the compact JSON of the chat messages Python built.
 * fixtures/python_answers.jsonl holds OpenAI tool_calls and the wrapper text Python makes of them.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { compactJson, parseJson, toolCallsText, trackMessages, type TrackRequest } from "../src/index.ts";

function fixtureRecords(name: string): Record<string, unknown>[] {
  const text = readFileSync(new URL(`./fixtures/${name}`, import.meta.url), "utf-8");
  // Split on "\n" only: the JSON keeps U+2028 and other line-like characters raw.
  return text
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => parseJson(line) as Record<string, unknown>);
}

/** Where two texts first differ, with some context, for a readable failure. */
function firstDifference(actual: string, expected: string): string {
  let index = 0;
  while (index < actual.length && actual[index] === expected[index]) index += 1;
  const context = (text: string) => JSON.stringify(text.slice(Math.max(0, index - 60), index + 60));
  return [
    `first difference at character ${index}:`,
    `  typescript: ${context(actual)}`,
    `  python:     ${context(expected)}`,
  ].join("\n");
}

describe("chat messages match Python byte for byte", () => {
  const records = fixtureRecords("python_messages.jsonl");

  test("the fixture holds both tracks' test rows and the edge cases", () => {
    const ids = records.map((record) => String(record.id));
    assert.equal(ids.filter((id) => id.startsWith("structured/test.jsonl:")).length, 50);
    assert.equal(ids.filter((id) => id.startsWith("toolcall/test.jsonl:")).length, 50);
    assert.ok(ids.filter((id) => id.startsWith("edge:")).length >= 3);
  });

  for (const record of records) {
    test(String(record.id), () => {
      const request = { ...record } as unknown as TrackRequest;
      const expected = record.messages_json as string;
      const actual = compactJson(trackMessages(request));
      assert.ok(actual === expected, firstDifference(actual, expected));
    });
  }
});

describe("tool_calls become the same wrapper text as in Python", () => {
  for (const record of fixtureRecords("python_answers.jsonl")) {
    test(String(record.id), () => {
      const text = toolCallsText(record.tool_calls as unknown[], record.tool_names as string[]);
      assert.equal(text, record.text);
    });
  }
});
