"""The C memory allocator a command runs with, and the Ray workers it starts inherit.

Why: on a CPU, PyTorch allocates and frees activation-sized buffers at every step. glibc's malloc hands
large freed blocks back to the kernel, which must zero fresh pages again on the next step: training the
demo's toolcall adapter on 2 cores spent ~25% of its cycles in the kernel's `clear_page_erms`
(`perf`). An allocator that keeps and reuses freed memory removes most of that:

    demo SLM, LoRA r=64, fp32, 8 toolcall rows (batch 1 x 2), ISA held to AVX2, Intel Xeon, 2 cores:
    glibc 115-121 tok/s, tcmalloc 152-159, the same losses (`benchmarks/cpu_allocator.py` measures
    it on the machine at hand; README, "Memory allocator")

Evaluation's decode engine reuses its own buffers and gains little (~3%).

`auto` picks tcmalloc where the system has it (Debian/Ubuntu: `libtcmalloc-minimal4`), else the
jemalloc that Ray's wheel ships (`ray/core/libjemalloc.so`, so every install has one) with one
arena, else glibc's malloc. An allocator can only be chosen before a process starts (`LD_PRELOAD`),
so a command's entry point calls `run_with_allocator()` first: it re-executes the same command once
with the library preloaded, and records the choice and its reason in `SLM_SWAP_ALLOCATOR_CHOICE`,
which the run records read back (`allocator_in_use`). `SLM_SWAP_ALLOCATOR=tcmalloc|jemalloc|glibc`
asks for one; the answers do not depend on it (the same arithmetic, other memory).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ALLOCATOR_ENV = "SLM_SWAP_ALLOCATOR"
CHOICE_ENV = "SLM_SWAP_ALLOCATOR_CHOICE"  # "<name>|<library or ->|<reason>", set once per command
ALLOCATOR_NAMES = ("auto", "tcmalloc", "jemalloc", "glibc")
# One arena for every thread, freed pages given back after jemalloc's usual delay. Inside the main job
# (training beside Ray's own threads) this trained the demo's structured adapter at 130 tok/s vs glibc's
# 125, while keeping freed pages for good (decay off, with or without one arena) fell to 98-109
# (README, "Memory allocator").
JEMALLOC_CONF = "narenas:1"
TCMALLOC_NAMES = ("libtcmalloc_minimal.so", "libtcmalloc.so")
LDCONFIG_ARCH = {"x86_64": "x86-64", "aarch64": "AArch64"}  # how `ldconfig -p` tags this machine's libraries

AllocatorName = Literal["tcmalloc", "jemalloc", "glibc"]


class AllocatorSettingError(ValueError):
    pass


@dataclass(frozen=True)
class AllocatorChoice:
    name: AllocatorName
    library: str | None  # the file to preload; None for glibc
    reason: str

    def to_env(self) -> str:
        return f"{self.name}|{self.library or '-'}|{self.reason}"

    @classmethod
    def from_env(cls, value: str) -> AllocatorChoice | None:
        parts = value.split("|", 2)
        if len(parts) != 3 or parts[0] not in ALLOCATOR_NAMES[1:]:
            return None
        return cls(parts[0], None if parts[1] == "-" else parts[1], parts[2])  # type: ignore[arg-type]


def system_tcmalloc(ldconfig_listing: str | None = None) -> str | None:
    """The path of the system's tcmalloc for this machine's architecture, from the loader's cache."""
    if ldconfig_listing is None:
        try:
            ldconfig_listing = subprocess.run(
                ["/sbin/ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    arch = LDCONFIG_ARCH.get(platform.machine())
    found: dict[str, str] = {}
    for line in ldconfig_listing.splitlines():
        name, _, path = line.strip().partition(" => ")
        soname, _, tags = name.partition(" (")
        if arch is not None and arch not in tags:
            continue
        for wanted in TCMALLOC_NAMES:
            if soname.startswith(wanted) and Path(path).is_file():
                found.setdefault(wanted, path)
    return next((found[name] for name in TCMALLOC_NAMES if name in found), None)


def ray_jemalloc() -> str | None:
    """The jemalloc that Ray's wheel ships, found without importing Ray."""
    spec = importlib.util.find_spec("ray")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "core" / "libjemalloc.so"
        if path.is_file():
            return str(path)
    return None


def choose_allocator(requested: str, tcmalloc: str | None, jemalloc: str | None) -> AllocatorChoice:
    """What `requested` (auto / tcmalloc / jemalloc / glibc) means given the libraries found."""
    if requested not in ALLOCATOR_NAMES:
        raise AllocatorSettingError(f"{ALLOCATOR_ENV}={requested!r}: expected one of {', '.join(ALLOCATOR_NAMES)}")
    if requested == "glibc":
        return AllocatorChoice("glibc", None, "glibc as asked")
    if requested == "tcmalloc":
        if tcmalloc is None:
            raise AllocatorSettingError(
                f"{ALLOCATOR_ENV}=tcmalloc, but the loader knows no libtcmalloc (`ldconfig -p`): install it "
                "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4) or unset the variable"
            )
        return AllocatorChoice("tcmalloc", tcmalloc, "tcmalloc as asked")
    if requested == "jemalloc":
        if jemalloc is None:
            raise AllocatorSettingError(f"{ALLOCATOR_ENV}=jemalloc, but Ray's wheel has no core/libjemalloc.so")
        return AllocatorChoice("jemalloc", jemalloc, "Ray's jemalloc as asked, one arena")
    if tcmalloc is not None:
        return AllocatorChoice("tcmalloc", tcmalloc, "auto: the system's tcmalloc")
    if jemalloc is not None:
        return AllocatorChoice(
            "jemalloc", jemalloc, "auto: no system tcmalloc (libtcmalloc-minimal4); Ray's jemalloc, one arena"
        )
    return AllocatorChoice("glibc", None, "auto: neither a system tcmalloc nor Ray's jemalloc found")


def preloaded(library: str, environ: dict[str, str]) -> bool:
    return library in environ.get("LD_PRELOAD", "").replace(":", " ").split()


def environment_to_choose_afresh(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without a choice already made (the choice, the preload and jemalloc's settings), so a
    command started with it chooses its allocator itself, as a command started from a shell does."""
    return {key: value for key, value in environ.items() if key not in (CHOICE_ENV, "LD_PRELOAD", "MALLOC_CONF")}


def run_with_allocator() -> None:
    """At a command's start (before torch is imported): re-execute this command once with the chosen
    allocator preloaded. Does nothing where a parent already chose (the variable is inherited), off
    Linux, or where glibc is the choice. A bad `SLM_SWAP_ALLOCATOR` stops the command with its message."""
    if os.environ.get(CHOICE_ENV) or sys.platform != "linux":
        return
    try:
        choice = choose_allocator(os.environ.get(ALLOCATOR_ENV) or "auto", system_tcmalloc(), ray_jemalloc())
    except AllocatorSettingError as error:
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(2) from None
    os.environ[CHOICE_ENV] = choice.to_env()
    if choice.library is None or preloaded(choice.library, dict(os.environ)):
        return
    environ = dict(os.environ)
    environ["LD_PRELOAD"] = " ".join(filter(None, [choice.library, environ.get("LD_PRELOAD", "")]))
    if choice.name == "jemalloc":
        environ.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def loaded_allocator(maps: str | None = None) -> AllocatorName:
    """Which allocator this process really has mapped (its /proc/self/maps), whatever was asked."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "glibc"
    if "libtcmalloc" in maps:
        return "tcmalloc"
    if "libjemalloc" in maps:
        return "jemalloc"
    return "glibc"


def allocator_in_use() -> dict[str, str]:
    """For run records: the allocator this process runs with, and why."""
    name = loaded_allocator()
    choice = AllocatorChoice.from_env(os.environ.get(CHOICE_ENV, ""))
    if choice is None:
        reason = "not chosen by an slm-swap entry point (the process's own)"
    elif choice.name != name:
        reason = f"{choice.reason}; but this process has {name} loaded"
    else:
        reason = choice.reason
    return {"allocator": name, "allocator_reason": reason}
