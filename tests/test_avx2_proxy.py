"""`benchmarks/avx2_proxy.sh`: a command run as an AVX2-only CPU runs it (README's AVX2 proxy runs)."""

from __future__ import annotations

import os
import subprocess
import sys

from ray_app.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "avx2_proxy.sh"


def run(arguments, **environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("AVX2_PROXY")}
    return subprocess.run([str(SCRIPT), *arguments], capture_output=True, text=True, env={**env, **environment})


def test_the_command_runs_with_torch_onednn_and_mkl_held_to_avx2_and_the_script_as_its_compiler():
    shown = run([sys.executable, "-c", "import os; print([os.environ[k] for k in ('ATEN_CPU_CAPABILITY', "
                 "'ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS', 'CC', 'AVX2_PROXY_AS_CC')])"])  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(["avx2", "AVX2", "AVX2", str(SCRIPT.resolve()), "1"])


def test_as_the_compiler_it_builds_for_haswell_instead_of_this_cpu_and_says_so_in_its_version():
    compiled = run(["-O3", "-march=native", "-fopenmp", "kernel.c"], AVX2_PROXY_AS_CC="1", AVX2_PROXY_REAL_CC="echo")
    assert compiled.returncode == 0 and compiled.stdout.split() == ["-O3", "-march=haswell", "-fopenmp", "kernel.c"]
    version = run(["--version"], AVX2_PROXY_AS_CC="1", AVX2_PROXY_REAL_CC="echo")
    # another version text: the kernel cache (keyed by it) keeps the haswell build apart from the native one
    assert version.stdout.splitlines() == ["--version", "avx2_proxy.sh: -march=native built as -march=haswell"]


def test_without_a_command_it_says_how_to_use_it():
    shown = run([])
    assert shown.returncode == 2 and "usage:" in shown.stderr
