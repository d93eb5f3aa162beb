"""The Ray Data side of evaluation: a pool of SLM actors answering fixed batches of rows.

Batches are formed once, from the whole split (rows 0-7, 8-15, ...), and each dataset item is one
whole batch, so the rows generated together are the same in every run, resumed or not: with greedy
decoding that makes the predictions byte-identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from ray_app.data.rows import Row, Track
from ray_app.engines.base import EngineRequest
from ray_app.engines.slm import SlmEngine, SlmSettings


def fixed_batches(rows: list[Row], batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, len(rows)))) for start in range(0, len(rows), batch_size)]


def prediction_record(index: int, row: Row, generation) -> dict[str, Any]:
    return {
        "index": index,
        "prompt": row.prompt,
        "completion": row.completion,
        "prediction": generation.text,
        "latency_s": round(generation.latency_s, 6),
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
    }


class SlmPredictor:
    """Ray Data actor: loads the SLM once, answers one fixed batch per call."""

    def __init__(self, settings: dict[str, Any], track: Track):
        self.engine = SlmEngine(SlmSettings(**settings))
        self.track = track

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        outputs = []
        for payload in batch["payload"]:
            work = json.loads(payload)
            rows = [
                Row(prompt, completion) for prompt, completion in zip(work["prompts"], work["completions"], strict=True)
            ]
            requests = [
                EngineRequest(index, self.track, row.prompt) for index, row in zip(work["indices"], rows, strict=True)
            ]
            started = time.perf_counter()
            generations = self.engine.generate(requests)
            records = [
                prediction_record(index, row, generation)
                for index, row, generation in zip(work["indices"], rows, generations, strict=True)
            ]
            outputs.append(
                json.dumps(
                    {"records": records, "elapsed_s": time.perf_counter() - started, "engine": self.engine.describe()}
                )
            )
        return {"result": outputs}


def predict_with_ray_data(
    rows: list[Row],
    batches: list[list[int]],
    settings: SlmSettings,
    track: Track,
    num_actors: int,
    actor_num_cpus: float,
    actor_num_gpus: float,
) -> Iterator[dict[str, Any]]:
    """Yield `{"records", "elapsed_s", "engine"}` per finished batch, in completion order."""
    import ray

    items = [
        {
            "payload": json.dumps(
                {
                    "indices": batch,
                    "prompts": [rows[i].prompt for i in batch],
                    "completions": [rows[i].completion for i in batch],
                }
            )
        }
        for batch in batches
    ]
    settings_json = asdict(settings)
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        SlmPredictor,
        fn_constructor_kwargs={"settings": settings_json, "track": track},
        batch_size=1,  # one item = one fixed batch of rows
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=actor_num_cpus,
        num_gpus=actor_num_gpus,
    )
    for result_row in dataset.iter_rows():
        yield json.loads(result_row["result"])
