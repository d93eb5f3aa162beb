"""cluster.yaml, runtime_env.yaml and serve_config.yaml are what Ray's own schemas accept."""

from __future__ import annotations

import json
from pathlib import Path

import ray
import yaml

from ray_app.paths import PROJECT_ROOT


def load_yaml(relative: str) -> dict:
    return yaml.safe_load((PROJECT_ROOT / relative).read_text(encoding="utf-8"))


def test_cluster_yaml_passes_the_cluster_launcher_schema_with_a_4_gpu_worker_type():
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cluster = load_yaml("cluster.yaml")
    jsonschema.validate(cluster, schema)
    worker = cluster["available_node_types"]["gpu_worker_4x"]
    assert worker["node_config"]["InstanceType"] == "g5.12xlarge"  # 4 GPUs per node
    assert any("[gpu]" in command for command in cluster["setup_commands"])


def test_runtime_env_keeps_shared_storage_out_of_the_upload_and_points_the_roots_there():
    from ray.runtime_env import RuntimeEnv

    runtime_env = load_yaml("runtime_env.yaml")
    RuntimeEnv(**runtime_env)  # Ray's own validation
    for excluded in ("slm_swap/02_dataset", "slm_swap/04_ft", "slm_swap/05_eval", "slm_swap/models", ".venv"):
        assert excluded in runtime_env["excludes"]
    for variable in ("SLM_SWAP_DATASET_ROOT", "SLM_SWAP_ADAPTER_ROOT", "SLM_SWAP_EVAL_ROOT", "SLM_MODEL_PATH"):
        assert runtime_env["env_vars"][variable].startswith("/mnt/shared/")
    assert runtime_env["env_vars"]["PYTHONHASHSEED"] == "42"
    assert runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"


def test_serve_config_passes_the_serve_schema_and_builds_the_app():
    from ray.serve.schema import ServeDeploySchema

    from ray_app.serve.app import ServeSettings, build_app

    config = load_yaml("slm_swap/serve_config.yaml")
    ServeDeploySchema(**config)
    [application] = config["applications"]
    assert application["import_path"] == "ray_app.serve.app:build_app"
    assert config["http_options"]["host"] == "127.0.0.1"
    settings = ServeSettings.from_json(application["args"])
    assert settings.max_ongoing_requests >= settings.max_batch_size
    build_app(application["args"])
