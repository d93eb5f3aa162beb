"""The `slm-swap` command (`python -m ray_app` too): the allocator is chosen before anything heavy loads.

`run_with_allocator()` re-executes the command once with tcmalloc or jemalloc preloaded
(ray_app/memory_allocator.py), so this module imports only that module first; the CLI (typer, rich and
the settings, ~0.7 s) is imported once, in the process that runs the command.
"""

from ray_app.memory_allocator import run_with_allocator


def main() -> None:
    run_with_allocator()
    from ray_app.cli import main as run_cli

    run_cli()


if __name__ == "__main__":
    main()
