"""The `slm-swap` Typer app, its command groups, and what every command shares: the option helps
used by several commands, options bound by a config dataclass field, the error exit and Ctrl-C."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ray_app.engines.adapter_weights import AdapterWeights
from ray_app.engines.cpu_linear import CpuLinear
from ray_app.engines.decode.attention_kernel import DecodeAttention
from ray_app.engines.precision import Precision
from ray_app.settings import COMMAND_LINE, SettingsError, describe, field_types, number_bound, parse_value

app = typer.Typer(
    help="Prove, from an agent's traces, whether a small local model can replace its hosted LLM.",
    pretty_exceptions_show_locals=False,  # locals may hold keys; tracebacks stay short
)
data_app = typer.Typer(help="Build and check the train/val/test splits.")
models_app = typer.Typer(help="Checkpoints: the demo SLM and SLM_MODEL_PATH.")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")

console = Console(stderr=True)

PRECISION_HELP = (
    "auto (on a GPU bf16 when the weights take at most half its memory, else 8bit; on CPU bf16 where the CPU "
    "has native bf16, else fp32), fp32, bf16, 8bit, 4bit"
)
DECODE_ATTENTION_HELP = (
    "CPU decode steps' attention: auto (our kernel compiled for this CPU; torch's where no C compiler), compiled, torch"
)
CPU_LINEAR_HELP = (
    "fp32 and bf16 on CPU: auto (oneDNN's packed kernels where a probe finds them 1.2x faster), torch, onednn"
)
ADAPTER_WEIGHTS_HELP = (
    "auto (merged into a copy of an fp32 base when the copies fit in memory, else beside the base), merged, unmerged"
)


# The SLM engine's options, the same in every command that loads the SLM (each takes its default from its
# own settings dataclass).
PrecisionOption = Annotated[Precision, typer.Option(help=PRECISION_HELP)]
AdapterWeightsOption = Annotated[AdapterWeights, typer.Option(help=ADAPTER_WEIGHTS_HELP)]
CpuLinearOption = Annotated[CpuLinear, typer.Option(help=CPU_LINEAR_HELP)]
DecodeAttentionOption = Annotated[DecodeAttention, typer.Option(help=DECODE_ATTENTION_HELP)]


def bounded(cls: type, name: str, *flags: str, help: str | None = None) -> typer.models.OptionInfo:
    """A typer option whose text is parsed by `ray_app.settings` to the dataclass field's type and bound.

    The default stays on the parameter (`= TrainConfig.learning_rate`), taken from the same dataclass."""
    if number_bound(cls, name) is None:
        return typer.Option(*flags, help=help)
    annotation = field_types(cls)[name]

    def parse(text: str):
        try:
            return parse_value(annotation, text, name, COMMAND_LINE)
        except SettingsError:
            raise typer.BadParameter(f"expected {describe(annotation, null=False)}, got {text!r}") from None

    bound = " ".join(describe(annotation, null=False).split()[-2:])  # "≥ 1", "> 0"
    return typer.Option(*flags, help=f"{help} ({bound})" if help else bound, parser=parse)


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def interrupted(kept: str) -> None:
    """Ctrl-C: say what stays on disk and that the same command resumes; exit 130 (128 + SIGINT)."""
    from ray_app.ray_runtime import quiet_half_built_ray_objects_at_exit

    quiet_half_built_ray_objects_at_exit()
    console.print(
        f"\n[yellow]Interrupted. Kept: {kept}. Run the same command again to resume.[/]",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(130)


def evaluate_or_exit(config, kept_on_interrupt: str) -> None:
    """`run_eval`, with bad inputs as one message (exit 2) and Ctrl-C as `interrupted`."""
    from ray_app.eval.evaluate import eval_input_errors, run_eval

    try:
        run_eval(config)
    except eval_input_errors() as error:
        fail(str(error))
    except KeyboardInterrupt:
        interrupted(kept_on_interrupt)
