"""The Ray Data side of evaluation: a pool of SLM actors, each answering fixed groups of rows with the
project's decode engine (`engines/decode/`, the one Serve runs).

Groups are formed once, from the whole split (rows 0-31, 32-63, ... for `rows_per_task` 32), and
each dataset item is one whole group. An actor feeds its group to the engine in split order: the
engine keeps up to `batch_size` rows decoding and admits the next row as soon as one finishes, by
step count, never by the clock. So the rows that decode together at each step are the same in
every run, whatever the number of actors and however often a run was resumed: with greedy decoding
that makes the predictions byte-identical.

An item may ask for its group under several decodings, and items may come from several tracks and
name several models (the base SLM or one of its adapters): the main job evaluates every configuration
of a step in one pass (`evaluate.run_evals`: both tracks, free and constrained, the base or each
track's adapter): one actor pool, one load of the base (and of each adapter), and each group answered
free, then constrained, by the same actor, with the model its item names. Under constrained decoding
the actor builds every row's constraint from the row's prompt (`row_constraints.py`, the same pure
function the driver checked them with); free decoding sends none. The engine schedules a group the
same whatever its prefix cache holds (`engines/decode/prefill.PrefillTask`), so the bytes of a
decoding's answers do not depend on whether another decoding ran first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray_app.data.rows import Row, Track
from ray_app.engines.base import EngineRequest
from ray_app.engines.decode.engine import SlmEngine
from ray_app.engines.slm import SlmSettings
from ray_app.eval.config import Decoding
from ray_app.eval.row_constraints import row_constraint

# How often an actor sends what it has answered of a group (as Ray Data output rows to the driver).
RESULT_EVERY_S = 5.0


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

    def __init__(self, settings: dict[str, Any], adapters: dict[str, str]):
        self.settings = SlmSettings(**settings)
        self.adapters = {name: Path(folder) for name, folder in adapters.items()}
        self.engine: SlmEngine | None = None

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list[str]]]:
        """Yields the group's answered rows under each decoding as they finish, at most one result every
        `RESULT_EVERY_S` and one when the decoding is done: the driver's progress bar and its store
        move during a group, and the free answers are stored before the constrained pass starts.
        What a result holds depends on the clock; what a row's answer is does not (the schedule is
        step-driven), so a resumed run that answers a partly stored group again gets the same bytes."""
        if self.engine is None:
            self.engine = SlmEngine(self.settings, self.adapters)  # on the thread every call runs on
        for payload in batch["payload"]:
            work = json.loads(payload)
            track, model = work["track"], work["model"]
            rows = [
                Row(prompt, completion) for prompt, completion in zip(work["prompts"], work["completions"], strict=True)
            ]
            for decoding in work["decodings"]:
                requests = [
                    EngineRequest(
                        index,
                        track,
                        row.prompt,
                        row_constraint(track, row.prompt) if decoding == "constrained" else None,
                    )
                    for index, row in zip(work["indices"], rows, strict=True)
                ]
                since = time.perf_counter()
                records = []
                for position, generation in self.engine.generate_as_finished(requests, model):
                    records.append(prediction_record(work["indices"][position], rows[position], generation))
                    if time.perf_counter() - since >= RESULT_EVERY_S:
                        yield self.result(track, model, decoding, records, since)
                        since, records = time.perf_counter(), []
                if records:
                    yield self.result(track, model, decoding, records, since)

    def result(
        self, track: Track, model: str, decoding: Decoding, records: list[dict[str, Any]], since: float
    ) -> dict[str, list[str]]:
        """One Ray Data output row: answered rows and the generation time since the previous result."""
        result = {
            "track": track,
            "model": model,
            "decoding": decoding,
            "records": records,
            "elapsed_s": time.perf_counter() - since,
            "engine": self.engine.describe(model),
        }
        return {"result": [json.dumps(result)]}


@dataclass(frozen=True)
class PassItem:
    """One dataset item: a fixed group of one track's rows, for one model, under its decodings."""

    track: Track
    model: str  # the base (`slm`) or an adapter's model name
    group: list[int]
    decodings: list[Decoding]


def predict_with_ray_data(
    rows: dict[Track, list[Row]],
    work: list[PassItem],
    settings: SlmSettings,
    adapters: dict[str, Path],
    num_actors: int,
    actor_num_cpus: float,
    actor_num_gpus: float,
) -> Iterator[dict[str, Any]]:
    """For each item of `work`, yield `{"track", "model", "decoding", "records", "elapsed_s", "engine"}` as
    the group's rows are answered under each of its decodings (a group's rows may come in several
    results, `SlmPredictor`), in completion order. `adapters`: model name → folder, loaded beside the
    base by every actor."""
    import ray

    from ray_app.ray_runtime import map_batches_without_restarts

    items = [
        {
            "payload": json.dumps(
                {
                    "track": item.track,
                    "model": item.model,
                    "indices": item.group,
                    "prompts": [rows[item.track][i].prompt for i in item.group],
                    "completions": [rows[item.track][i].completion for i in item.group],
                    "decodings": item.decodings,
                }
            )
        }
        for item in work
    ]
    settings_json = asdict(settings)
    # Every result an actor yields is its own output block, sent on at once: by default Ray Data gathers
    # a task's outputs until 128 MiB and a group's results would all arrive when the group is done. A
    # dataset keeps the DataContext it was created under; the process's goes back as it was.
    context = ray.data.DataContext.get_current()
    target_max_block_size, context.target_max_block_size = context.target_max_block_size, 1
    try:
        dataset = map_batches_without_restarts(
            ray.data.from_items(items, override_num_blocks=max(1, len(items))),
            SlmPredictor,
            fn_constructor_kwargs={"settings": settings_json, "adapters": {n: str(f) for n, f in adapters.items()}},
            batch_size=1,  # one item = one fixed group of rows
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            num_cpus=actor_num_cpus,
            num_gpus=actor_num_gpus,
        )
    finally:
        context.target_max_block_size = target_max_block_size
    for result_row in dataset.iter_rows():
        yield json.loads(result_row["result"])
