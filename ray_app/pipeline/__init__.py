"""The main job: data → evaluate teacher and SLM → decide → train → evaluate adapters → decide again → report."""

from ray_app.pipeline.config import PipelineConfig, PipelineConfigError, build_config
from ray_app.pipeline.run import PipelineError, PipelineOutcome, run_pipeline

__all__ = ["PipelineConfig", "PipelineConfigError", "PipelineError", "PipelineOutcome", "build_config", "run_pipeline"]
