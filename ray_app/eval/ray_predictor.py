"""The Ray Data side of evaluation: a pool of SLM actors, each answering fixed groups of rows with the
project's decode engine (`engines/decode/`, the one Serve runs).

Groups are formed once, from the whole split (rows 0-31, 32-63, ... for `rows_per_task` 32), and
each dataset item is one whole group. An actor feeds its group to the engine in split order: the
engine keeps up to `batch_size` rows decoding and admits the next row as soon as one finishes, by
step count, never by the clock. So the rows that decode together at each step are the same in
every run, whatever the number of actors and however often a run was resumed: with greedy decoding
that makes the predictions byte-identical.

An item may ask for its group under several decodings: the main job evaluates the free and the
constrained configuration of one model in one pass (`evaluate.run_evals`): one actor pool, one model
load, and each group answered free, then constrained, by the same actor. Under constrained decoding
the actor builds every row's constraint from the row's prompt (`row_constraints.py`, the same pure
function the driver checked them with); free decoding sends none. The engine schedules a group the
same whatever its prefix cache holds (`engines/decode/running_batch.PrefillTask`), so the bytes of a
decoding's answers do not depend on whether another decoding ran first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from ray_app.data.rows import Row, Track
from ray_app.engines.base import EngineRequest
from ray_app.engines.decode.engine import SlmEngine
from ray_app.engines.slm import SlmSettings
from ray_app.eval.config import Decoding
from ray_app.eval.row_constraints import row_constraint


def fixed_groups(rows: list[Row], group_size: int) -> list[list[int]]:
    return [list(range(start, min(start + group_size, len(rows)))) for start in range(0, len(rows), group_size)]


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
    """Ray Data actor: loads the SLM once, answers one fixed group of rows per call, under each decoding
    the item names, in that order (free, then constrained: the second pass finds the group's prompt
    prefixes in the engine's prefix cache, which saves their prefill and changes no byte).

    The SLM loads on the first call, not in the constructor: Ray Data runs the constructor and the
    calls on two threads, and a model loaded on one thread and run on another is ~2x slower on a
    2-core CPU (torch's OpenMP teams: `engines/decode/loaded_slm.py`)."""

    def __init__(self, settings: dict[str, Any], track: Track):
        self.settings = SlmSettings(**settings)
        self.engine: SlmEngine | None = None
        self.track = track

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list[str]]]:
        """Yields one result per group and decoding, as each is answered: the free answers reach the
        driver's store before the constrained pass starts."""
        if self.engine is None:
            self.engine = SlmEngine(self.settings)  # on the thread every call runs on
        for payload in batch["payload"]:
            work = json.loads(payload)
            rows = [
                Row(prompt, completion) for prompt, completion in zip(work["prompts"], work["completions"], strict=True)
            ]
            for decoding in work["decodings"]:
                requests = [
                    EngineRequest(
                        index,
                        self.track,
                        row.prompt,
                        row_constraint(self.track, row.prompt) if decoding == "constrained" else None,
                    )
                    for index, row in zip(work["indices"], rows, strict=True)
                ]
                started = time.perf_counter()
                generations = self.engine.generate(requests)
                records = [
                    prediction_record(index, row, generation)
                    for index, row, generation in zip(work["indices"], rows, generations, strict=True)
                ]
                result = {
                    "decoding": decoding,
                    "records": records,
                    "elapsed_s": time.perf_counter() - started,
                    "engine": self.engine.describe(),
                }
                yield {"result": [json.dumps(result)]}


def predict_with_ray_data(
    rows: list[Row],
    work: list[tuple[list[int], list[Decoding]]],
    settings: SlmSettings,
    track: Track,
    num_actors: int,
    actor_num_cpus: float,
    actor_num_gpus: float,
) -> Iterator[dict[str, Any]]:
    """For each (group, decodings) in `work`, yield `{"decoding", "records", "elapsed_s", "engine"}` as
    the group is answered under each of its decodings, in completion order."""
    import ray

    from ray_app.ray_runtime import map_batches_without_restarts

    items = [
        {
            "payload": json.dumps(
                {
                    "indices": group,
                    "prompts": [rows[i].prompt for i in group],
                    "completions": [rows[i].completion for i in group],
                    "decodings": decodings,
                }
            )
        }
        for group, decodings in work
    ]
    settings_json = asdict(settings)
    dataset = map_batches_without_restarts(
        ray.data.from_items(items, override_num_blocks=max(1, len(items))),
        SlmPredictor,
        fn_constructor_kwargs={"settings": settings_json, "track": track},
        batch_size=1,  # one item = one fixed group of rows
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=actor_num_cpus,
        num_gpus=actor_num_gpus,
    )
    for result_row in dataset.iter_rows():
        yield json.loads(result_row["result"])
