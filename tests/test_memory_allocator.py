"""The allocator choice (pure) and the re-execution that preloads it (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ray_app.memory_allocator import (
    CHOICE_ENV,
    JEMALLOC_CONF,
    AllocatorChoice,
    AllocatorSettingError,
    choose_allocator,
    environment_to_choose_afresh,
    loaded_allocator,
    ray_jemalloc,
    system_tcmalloc,
)
from ray_app.paths import PROJECT_ROOT

LDCONFIG = """\
3 libs found in cache `/etc/ld.so.cache'
\tlibtcmalloc_minimal_debug.so.4 (libc6,x86-64) => {debug}
\tlibtcmalloc_minimal.so.4 (libc6,AArch64) => {other_arch}
\tlibtcmalloc.so.4 (libc6,x86-64) => {full}
\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => {minimal}
"""


def test_auto_prefers_the_systems_tcmalloc_then_rays_jemalloc_then_glibc():
    assert choose_allocator("auto", "/lib/libtcmalloc_minimal.so.4", "/ray/libjemalloc.so") == AllocatorChoice(
        "tcmalloc", "/lib/libtcmalloc_minimal.so.4", "auto: the system's tcmalloc"
    )
    jemalloc = choose_allocator("auto", None, "/ray/libjemalloc.so")
    assert (jemalloc.name, jemalloc.library) == ("jemalloc", "/ray/libjemalloc.so")
    assert "libtcmalloc-minimal4" in jemalloc.reason  # says what to install for the faster one
    assert choose_allocator("auto", None, None).name == "glibc"
    assert choose_allocator("glibc", "/lib/libtcmalloc_minimal.so.4", "/ray/libjemalloc.so").library is None
    assert choose_allocator("jemalloc", "/lib/libtcmalloc_minimal.so.4", "/ray/libjemalloc.so").name == "jemalloc"


def test_asking_for_a_missing_or_unknown_allocator_is_refused_with_what_to_do():
    with pytest.raises(AllocatorSettingError, match="apt-get install libtcmalloc-minimal4"):
        choose_allocator("tcmalloc", None, "/ray/libjemalloc.so")
    with pytest.raises(AllocatorSettingError, match="no core/libjemalloc.so"):
        choose_allocator("jemalloc", "/lib/libtcmalloc.so.4", None)
    with pytest.raises(AllocatorSettingError, match="SLM_SWAP_ALLOCATOR='mimalloc': expected one of auto"):
        choose_allocator("mimalloc", None, None)


def test_the_loader_cache_gives_the_minimal_tcmalloc_of_this_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    files = {name: tmp_path / f"{name}.so.4" for name in ("debug", "other_arch", "full", "minimal")}
    for path in files.values():
        path.write_bytes(b"")
    listing = LDCONFIG.format(**{name: str(path) for name, path in files.items()})
    assert system_tcmalloc(listing) == str(files["minimal"])  # not the debug build, not AArch64's
    files["minimal"].unlink()  # listed, but gone from disk
    assert system_tcmalloc(listing) == str(files["full"])
    assert system_tcmalloc("0 libs found in cache `/etc/ld.so.cache'\n") is None


def test_the_choice_travels_in_one_variable_and_a_bad_value_reads_as_none():
    choice = AllocatorChoice("jemalloc", "/ray/core/libjemalloc.so", "auto: no system tcmalloc; Ray's jemalloc")
    assert AllocatorChoice.from_env(choice.to_env()) == choice
    glibc = AllocatorChoice("glibc", None, "glibc as asked")
    assert AllocatorChoice.from_env(glibc.to_env()) == glibc
    assert AllocatorChoice.from_env("") is None
    assert AllocatorChoice.from_env("mimalloc|/x|y") is None


def test_the_process_maps_tell_which_allocator_is_loaded():
    assert loaded_allocator("7f.. r-xp /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4\n") == "tcmalloc"
    assert loaded_allocator("7f.. r-xp /venv/site-packages/ray/core/libjemalloc.so\n") == "jemalloc"
    assert loaded_allocator("7f.. r-xp /usr/lib/x86_64-linux-gnu/libc.so.6\n") == "glibc"


COMMAND = textwrap.dedent(
    """
    import json, os, sys
    from ray_app.memory_allocator import allocator_in_use, run_with_allocator
    print("started", flush=True)  # printed twice where the command re-executes itself
    run_with_allocator()
    print(json.dumps({**allocator_in_use(), "argv": sys.argv[1:], "conf": os.environ.get("MALLOC_CONF")}))
    """
)


def run_command(environ_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    environ = environment_to_choose_afresh(dict(os.environ))
    for key, value in environ_changes.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run(
        [sys.executable, "-c", COMMAND, "--flag", "value with spaces"],
        cwd=PROJECT_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD and /proc/self/maps are Linux's")
def test_a_command_re_executes_once_with_the_chosen_allocator_loaded_and_its_arguments_kept():
    expected = "tcmalloc" if system_tcmalloc() else ("jemalloc" if ray_jemalloc() else "glibc")
    done = run_command({"SLM_SWAP_ALLOCATOR": None})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:-1] == (["started", "started"] if expected != "glibc" else ["started"])
    record = json.loads(lines[-1])
    assert record["allocator"] == expected  # really mapped into the re-executed process
    assert record["allocator_reason"].startswith("auto: ")
    assert record["argv"] == ["--flag", "value with spaces"]
    assert record["conf"] == (JEMALLOC_CONF if expected == "jemalloc" else None)

    asked = run_command({"SLM_SWAP_ALLOCATOR": "glibc"})
    assert asked.stdout.splitlines()[0] == "started" and len(asked.stdout.splitlines()) == 2  # no re-execution
    assert json.loads(asked.stdout.splitlines()[-1])["allocator"] == "glibc"

    refused = run_command({"SLM_SWAP_ALLOCATOR": "mimalloc"})
    assert refused.returncode == 2
    assert "SLM_SWAP_ALLOCATOR='mimalloc': expected one of auto, tcmalloc, jemalloc, glibc" in refused.stderr


@pytest.mark.skipif(sys.platform != "linux" or ray_jemalloc() is None, reason="needs Linux and Ray's jemalloc")
def test_rays_jemalloc_when_asked_and_a_parents_choice_is_inherited_not_redone():
    done = run_command({"SLM_SWAP_ALLOCATOR": "jemalloc"})
    record = json.loads(done.stdout.splitlines()[-1])
    assert (record["allocator"], record["allocator_reason"]) == ("jemalloc", "Ray's jemalloc as asked, one arena")
    # A child of a chosen command (a Ray worker, say) inherits the variable and runs as it is.
    inherited = run_command({CHOICE_ENV: "glibc|-|glibc as asked"})
    assert inherited.stdout.splitlines()[0] == "started" and len(inherited.stdout.splitlines()) == 2
    assert json.loads(inherited.stdout.splitlines()[-1])["allocator_reason"] == "glibc as asked"


@pytest.mark.skipif(sys.platform != "linux" or ray_jemalloc() is None, reason="needs Linux and Ray's jemalloc")
def test_the_slm_swap_command_chooses_the_allocator_before_it_imports_the_cli():
    # The command `make install` puts beside this interpreter; its re-execution imports the CLI once.
    command = Path(sys.executable).parent / "slm-swap"
    if not command.is_file():
        pytest.skip(f"{command} is not installed (`make install`)")
    environ = environment_to_choose_afresh(dict(os.environ))
    environ.update(SLM_SWAP_ALLOCATOR="jemalloc", PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run(
        [str(command), "models", "check-path", "nowhere"],
        cwd=PROJECT_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "nowhere" in done.stderr  # the command ran, with its own error
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("ray_app.memory_allocator") == 2  # once per process: before and after re-executing
    assert imported.count("ray_app.cli") == 1
