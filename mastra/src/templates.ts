/**
 * The project's one file of prompt text, `ray_app/prompts/templates.json`, read at run time (never
 * copied), and `{{name}}` rendering exactly as ray_app/prompts/templates.py does it.
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The repository's templates.json; `SLM_SWAP_TEMPLATES_PATH` points elsewhere (a deployed copy). */
export const TEMPLATES_PATH =
  process.env.SLM_SWAP_TEMPLATES_PATH ??
  fileURLToPath(new URL("../../ray_app/prompts/templates.json", import.meta.url));

const PLACEHOLDER_PATTERN = /\{\{([a-z_]+)\}\}/g;

export class TemplateError extends Error {
  override name = "TemplateError";
}

let cachedTemplates: Record<string, unknown> | undefined;

export function loadTemplates(): Record<string, unknown> {
  if (cachedTemplates === undefined) {
    let text: string;
    try {
      text = readFileSync(TEMPLATES_PATH, "utf-8");
    } catch (error) {
      throw new TemplateError(
        `cannot read the prompt templates at ${TEMPLATES_PATH} (${(error as Error).message}); ` +
          "run from a checkout of slm-swap or set SLM_SWAP_TEMPLATES_PATH to its ray_app/prompts/templates.json",
      );
    }
    cachedTemplates = JSON.parse(text) as Record<string, unknown>;
  }
  return cachedTemplates;
}

export function templateText(name: string): string {
  const text = loadTemplates()[name];
  if (typeof text !== "string") throw new TemplateError(`${TEMPLATES_PATH}: no text template named '${name}'`);
  return text;
}

/** Substitute every `{{key}}` with `values[key]` in one pass; a missing or extra value is an error. */
export function renderTemplate(templateName: string, values: Record<string, string>): string {
  const text = templateText(templateName);
  const wanted = [...new Set([...text.matchAll(PLACEHOLDER_PATTERN)].map((match) => match[1] as string))].sort();
  const given = Object.keys(values).sort();
  if (wanted.join("\n") !== given.join("\n")) {
    throw new TemplateError(`template '${templateName}' takes [${wanted.join(", ")}], got [${given.join(", ")}]`);
  }
  // One pass, so a value that itself contains "{{x}}" is never substituted again.
  return text.replace(PLACEHOLDER_PATTERN, (_match, key: string) => values[key] as string);
}
