/** The slm-swap TypeScript client: prompt building identical to the Python evaluation, and the Serve client. */

export * from "./client.ts";
export * from "./json_text.ts";
export * from "./prompts.ts";
export * from "./templates.ts";
export * from "./tool_call_format.ts";
