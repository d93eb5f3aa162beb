#!/usr/bin/env bash
# Run a command as an AVX2-only CPU runs it, on a machine with AVX-512 (README: "`make demo` on a fresh
# clone, run by run" and "Serving vs llama-server, run by run"):
#   - torch, oneDNN and MKL held to AVX2 (their own switches);
#   - our decode attention kernel built with -march=haswell instead of -march=native: this script is
#     also the C compiler (`CC`) the command sees; as such it swaps the flag, passes the rest to the
#     real compiler (AVX2_PROXY_REAL_CC, default gcc), and names itself in `--version`, so the kernel
#     cache (keyed by the compiler's version text) keeps this build apart from the native one.
# `auto` precision still reads the CPU's flags (avx512_bf16 and AMX are not held back), so pass fp32
# where an AVX2-only CPU's `auto` would pick it (--slm-precision fp32 --no-train-cpu-bf16, --precision
# fp32). llama-server: build_llama_server.py --isa avx2, serve_load.py --llama-server-isa avx2.
#
#   benchmarks/avx2_proxy.sh .venv/bin/python jobs/pipeline.py --slm-precision fp32 --no-train-cpu-bf16
set -euo pipefail
if [[ ${AVX2_PROXY_AS_CC:-} == 1 ]]; then
    real=${AVX2_PROXY_REAL_CC:-gcc}
    if [[ " $* " == *" --version "* ]]; then
        "$real" --version
        echo "avx2_proxy.sh: -march=native built as -march=haswell"
        exit 0
    fi
    flags=()
    for flag in "$@"; do
        [[ $flag == -march=native ]] && flag=-march=haswell
        flags+=("$flag")
    done
    exec "$real" "${flags[@]}"
fi
if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
export AVX2_PROXY_AS_CC=1 CC
CC=$(realpath "$0")
exec "$@"
