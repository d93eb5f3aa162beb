"""`slm-swap serve` (the OpenAI-compatible endpoint on Ray Serve) and `slm-swap agent` (the example
CodeAct agent against it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ray_app.cli.typer_app import (
    AdapterWeightsOption,
    CpuLinearOption,
    DecodeAttentionOption,
    PrecisionOption,
    app,
    bounded,
    console,
    fail,
)
from ray_app.serve.request_constraint import ConstrainedMode
from ray_app.serve.serve_settings import ServeSettings

CONSTRAINED_NOTES = {
    "auto": "constrained decoding: auto (a tool call always names an offered tool with arguments that fit its "
    "schema; the report judges this as slm-*-constrained; --constrained off to serve free decoding)",
    "off": "constrained decoding: off (only where a request asks: response_format, tool_choice required or named, "
    "strict tools)",
}


@app.command("serve")
def serve_command(
    model_path: Annotated[
        str | None,
        typer.Option(help="base SLM (default $SLM_MODEL_PATH; with none set, the demo SLM make demo fetched)"),
    ] = ServeSettings.model_path,
    adapter_root: Annotated[
        Path | None, typer.Option(help="serves each adapter_<name>/ in it as slm-<name> (default slm_swap/04_ft)")
    ] = None,
    host: Annotated[
        str, typer.Option(help="bind address; anything but 127.0.0.1 exposes the endpoint")
    ] = ServeSettings.host,
    port: Annotated[int, bounded(ServeSettings, "port")] = ServeSettings.port,
    precision: PrecisionOption = ServeSettings.precision,
    adapter_weights: AdapterWeightsOption = ServeSettings.adapter_weights,
    cpu_linear: CpuLinearOption = ServeSettings.cpu_linear,
    decode_attention: DecodeAttentionOption = ServeSettings.decode_attention,
    max_batch_size: Annotated[
        int, bounded(ServeSettings, "max_batch_size", help="requests decoding at once (continuous batching)")
    ] = ServeSettings.max_batch_size,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0, help="how long @serve.batch waits to group arrivals")
    ] = ServeSettings.batch_wait_timeout_s * 1000,
    max_tokens: Annotated[
        int, bounded(ServeSettings, "default_max_tokens", help="default max_tokens when a request gives none")
    ] = ServeSettings.default_max_tokens,
    max_model_len: Annotated[
        int | None, bounded(ServeSettings, "max_model_len", help="context limit (default: the model's)")
    ] = ServeSettings.max_model_len,
    prefix_cache_tokens: Annotated[
        int, bounded(ServeSettings, "prefix_cache_tokens", help="tokens of shared prompt prefixes kept (0: off)")
    ] = ServeSettings.prefix_cache_tokens,
    prefill_chunk_tokens: Annotated[
        int,
        bounded(ServeSettings, "prefill_chunk_tokens", help="prompt tokens prefilled between two decode steps"),
    ] = ServeSettings.prefill_chunk_tokens,
    replicas: Annotated[int, bounded(ServeSettings, "num_replicas")] = ServeSettings.num_replicas,
    cpus_per_replica: Annotated[float, typer.Option(min=0)] = ServeSettings.cpus_per_replica,
    gpus_per_replica: Annotated[float | None, typer.Option(min=0, help="default: 1 with GPUs, else 0")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(help="an accepted key, repeatable (default $SLM_SWAP_API_KEY, comma-separated: not in ps)"),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(envvar="SLM_SWAP_API_KEY_FILE", help="accepted keys, one a line; re-read when it changes"),
    ] = None,
    allow_unauthenticated: Annotated[
        bool, typer.Option(help="bind beyond loopback without a key (a gateway in front authenticates)")
    ] = ServeSettings.allow_unauthenticated,
    max_ongoing_requests: Annotated[
        int | None,
        bounded(ServeSettings, "max_ongoing_requests", help="chat requests a replica holds; 429 + Retry-After beyond"),
    ] = None,
    request_timeout_s: Annotated[
        float, bounded(ServeSettings, "request_timeout_s", help="a request's limit from arrival to last token")
    ] = ServeSettings.request_timeout_s,
    max_body_bytes: Annotated[int, bounded(ServeSettings, "max_body_bytes", help="413 beyond")] = (
        ServeSettings.max_body_bytes
    ),
    shutdown_grace_s: Annotated[
        float,
        bounded(ServeSettings, "shutdown_grace_s", help="on SIGTERM or Ctrl-C, running requests get this long"),
    ] = ServeSettings.shutdown_grace_s,
    constrained: Annotated[
        ConstrainedMode,
        typer.Option(
            help="auto: a request with tools decodes under the tool-call grammar once it opens the wrapper; off: only "
            "where a request asks (response_format, tool_choice required or named, strict tools)"
        ),
    ] = ServeSettings.constrained,
) -> None:
    """Serve the SLM and its adapters as an OpenAI-compatible endpoint on Ray Serve (blocks; Ctrl-C stops).

    With a key set every route but /health needs `Authorization: Bearer <key>`; binding beyond loopback
    without one is refused unless --allow-unauthenticated. SIGTERM or Ctrl-C, in the foreground or the
    background, stops admitting, lets running requests finish (--shutdown-grace-s), then stops Serve and
    the local Ray this command started."""
    from ray_app.models.model_path import ModelPathError
    from ray_app.paths import ADAPTER_ROOT
    from ray_app.ray_runtime import LeftoverRayError, cluster_gpus, signals_interrupt, wait_forever
    from ray_app.serve.app import start_server, stop_server  # before any signal handling: Ray is not started yet
    from ray_app.serve.guard import keys_from_env, keys_from_text

    problem = None
    with signals_interrupt():  # from here on SIGTERM, and SIGINT even in the background, end in the cleanup below
        try:
            api_keys = keys_from_text(" ".join(api_key), "--api-key") if api_key else keys_from_env()
            settings = ServeSettings(
                model_path=model_path,
                adapter_root=(adapter_root or ADAPTER_ROOT).resolve(),
                precision=precision,
                adapter_weights=adapter_weights,
                cpu_linear=cpu_linear,
                decode_attention=decode_attention,
                max_batch_size=max_batch_size,
                batch_wait_timeout_s=batch_wait_ms / 1000,
                default_max_tokens=max_tokens,
                max_model_len=max_model_len,
                prefix_cache_tokens=prefix_cache_tokens,
                prefill_chunk_tokens=prefill_chunk_tokens,
                num_replicas=replicas,
                cpus_per_replica=cpus_per_replica,
                gpus_per_replica=gpus_per_replica if gpus_per_replica is not None else (1.0 if cluster_gpus() else 0.0),
                max_ongoing_requests=max_ongoing_requests or max(ServeSettings.max_ongoing_requests, max_batch_size),
                host=host,
                port=port,
                api_key_file=str(api_key_file.resolve()) if api_key_file else None,
                allow_unauthenticated=allow_unauthenticated,
                request_timeout_s=request_timeout_s,
                max_body_bytes=max_body_bytes,
                shutdown_grace_s=shutdown_grace_s,
                constrained=constrained,
            )
            with console.status("starting Ray Serve; the replica loads the model"):
                server = start_server(settings, api_keys)
            if server.model_note:
                console.print(server.model_note, highlight=False, soft_wrap=True)
            console.print(f"serving {', '.join(server.models)} at {server.url}/v1 (OpenAI-compatible)", highlight=False)
            console.print(f"precision {server.precision}: {server.precision_reason}", highlight=False)
            if server.adapter_weights:
                console.print(f"adapters {server.adapter_weights}", highlight=False)
            console.print(CONSTRAINED_NOTES[settings.constrained], highlight=False, soft_wrap=True)
            for note in server.access:
                console.print(
                    note, style="yellow" if note.startswith("warning") else None, highlight=False, markup=False
                )
            console.print("Ctrl-C or SIGTERM stops it", highlight=False)
            wait_forever()
        except (ModelPathError, LeftoverRayError, ValueError) as error:
            problem = str(error)
        except KeyboardInterrupt:  # a signal: during start-up or while serving
            console.print(f"stopping: running requests get up to {shutdown_grace_s:g} s to finish", highlight=False)
        finally:
            stopped = stop_server()
            if stopped:
                console.print(stopped, highlight=False)
    if problem:
        fail(problem)


@app.command("agent")
def agent_command(
    request: Annotated[str, typer.Argument(help='what the user asks, e.g. "Look up the customer ana@example.com"')],
    model: Annotated[
        str | None, typer.Option(help="served model (default slm-codeact: the CodeAct adapter; slm: the base)")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible endpoint (default: slm-swap serve's, http://127.0.0.1:8000/v1)"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="SLM_SWAP_API_KEY", help="bearer token (slm-swap serve needs none)")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="model turns (default: the CodeAct loop's)")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="tokens per model turn (default: the CodeAct loop's)")
    ] = None,
    timeout_s: Annotated[
        float | None, typer.Option(min=1, help="seconds one model turn may take (default: ExampleAgentSettings')")
    ] = None,
) -> None:
    """The example CodeAct agent: the support-desk tools, the request, the Serve endpoint; prints each step.

    Exit code 0 when the run ended with a final answer, 1 when it did not, 2 for bad flags or an unusable endpoint."""
    from ray_app.codeact.example_agent import AgentEndpointError, AgentRunError, agent_settings, run_example_agent

    try:
        settings = agent_settings(model, base_url, api_key, max_steps, max_new_tokens, timeout_s)
        trajectory = run_example_agent(request, settings, write=lambda text: print(text, flush=True))
    except (ValueError, AgentEndpointError) as error:
        fail(str(error))
    except AgentRunError as error:
        fail(str(error), code=1)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not trajectory.has_final_answer:
        raise typer.Exit(1)
