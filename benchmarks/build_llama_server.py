"""Build llama.cpp's own `llama-server` (the serving benchmark's CPU peer) from the PyPI sdist.

llama-cpp-python's sdist vendors llama.cpp (`vendor/llama.cpp`, with `tools/server`), so the only
download is that sdist, from PyPI; its sha256 is checked against SDIST_SHA256. The build is
Release, static, only the `llama-server` and `llama-quantize` targets (the second makes the F16
GGUF from the Q4_1 one: benchmarks/llama_server.py), with native CPU flags (GGML_NATIVE, llama.cpp's
default: the binary runs on the machine that built it, so it uses every instruction this CPU has).
Turned off: the web UI (its assets would be fetched from Hugging Face at build time), OpenSSL (no
HTTPS on 127.0.0.1; LLAMA_CURL is passed OFF for older trees, this one deprecated it), and ggml's
AMX kernels, which -march=native switches on where the CPU has AMX: in this llama.cpp they crash at
their first tile load (SIGSEGV in ggml_backend_amx_mul_mat on `ldtilecfg`; llama.cpp issue #20824,
fix proposed in PR #26954), so llama.cpp runs its AVX-512/VNNI paths, as on a CPU without AMX
(torch's oneDNN does use AMX on the same machine). cmake runs under `nice -n 19` with `--jobs`
(default 2), so a shared machine stays usable.

Writes `storage/llama_server/` (`--isa avx2`: `storage/llama_server_avx2/`, see ISA_FLAGS):
    llama_cpp_python-<version>.tar.gz   the sdist
    src/llama_cpp_python-<version>/     its sources
    build/                              cmake's build tree (kept: a rebuild only compiles what changed)
    bin/llama-server, bin/llama-quantize
    build.json                          sdist sha256, cmake flags, CPU, build seconds

Idempotent: nothing is done when both binaries exist and build.json names SDIST_SHA256 and
today's flags for the ISA (`cmake_flags`); otherwise cmake rebuilds what changed in the kept build tree.
Prints the binary's path on stdout (progress on stderr).

    .venv/bin/python benchmarks/build_llama_server.py [--jobs 2] [--isa native|avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/build_llama_server.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.llama_cpp_server import LLAMA_CPP_VERSION  # noqa: E402
from benchmarks.machine_limits import cpu_description  # noqa: E402
from ray_app.atomic_files import atomic_write_json  # noqa: E402
from ray_app.models.fingerprint import file_sha256  # noqa: E402
from ray_app.paths import PROJECT_ROOT  # noqa: E402

# sha256 of llama_cpp_python-0.3.36.tar.gz on PyPI (the file pip downloads for LLAMA_CPP_VERSION)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
BUILD_ROOT = PROJECT_ROOT / "storage" / "llama_server"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_VERSION}"
TARGETS = ("llama-server", "llama-quantize")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
COMMON_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary, copied out of the build tree
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ON would download the UI from Hugging Face during the build
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
)
# What the CPU backend is built for: `native`, every instruction this CPU has (but AMX, above); `avx2`,
# what an AVX2-only CPU has (AVX2, FMA, F16C, BMI2; no AVX-512), so that a machine with AVX-512 can
# measure the peer as an AVX2-only machine runs it, beside our engine with its ISA held to AVX2 (README,
# "Serving vs llama-server, run by run"; benchmarks/avx2_proxy.sh holds our side). Each in its own folder.
ISA_FLAGS = {
    "native": (
        "-DGGML_NATIVE=ON",
        f"-DCMAKE_C_FLAGS={NO_AMX}",  # explicit -mno-* win over -march=native's implied features in gcc
        f"-DCMAKE_CXX_FLAGS={NO_AMX}",
    ),
    "avx2": (
        "-DGGML_NATIVE=OFF",
        "-DGGML_AVX=ON",
        "-DGGML_AVX2=ON",
        "-DGGML_FMA=ON",
        "-DGGML_F16C=ON",
        "-DGGML_BMI2=ON",
        "-DGGML_AVX512=OFF",
        "-DGGML_AVX_VNNI=OFF",
        "-DGGML_AMX_TILE=OFF",
    ),
}
ISAS = tuple(ISA_FLAGS)


def build_root(isa: str = "native") -> Path:
    if isa not in ISA_FLAGS:
        raise ValueError(f"isa must be one of {', '.join(ISAS)}, got {isa!r}")
    return BUILD_ROOT if isa == "native" else BUILD_ROOT.with_name(f"{BUILD_ROOT.name}_{isa}")


def cmake_flags(isa: str = "native") -> tuple[str, ...]:
    return (*COMMON_FLAGS, *ISA_FLAGS[isa])


class BuildFailed(RuntimeError):
    pass


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def llama_cpp_source(root: Path = BUILD_ROOT) -> Path:
    """The vendored llama.cpp tree inside the unpacked sdist."""
    return root / "src" / SDIST_NAME / "vendor" / "llama.cpp"


def server_binary(root: Path = BUILD_ROOT) -> Path:
    return root / "bin" / "llama-server"


def quantize_binary(root: Path = BUILD_ROOT) -> Path:
    return root / "bin" / "llama-quantize"


def built_from_pinned_sdist(root: Path = BUILD_ROOT, isa: str = "native") -> bool:
    """Both binaries are there, built from the pinned sdist with today's flags for `isa`."""
    record = root / "build.json"
    if not all((root / "bin" / target).is_file() for target in TARGETS) or not record.is_file():
        return False
    built = json.loads(record.read_text(encoding="utf-8"))
    return built.get("sdist_sha256") == SDIST_SHA256 and built.get("cmake_flags") == list(cmake_flags(isa))


def run_logged(command: list[str], log_path: Path, what: str) -> None:
    """Run under `nice -n 19`, output to the log; on failure raise with the log's last lines."""
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        result = subprocess.run(["nice", "-n", "19", *command], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise BuildFailed(f"{what} failed (exit {result.returncode}); full log {log_path}; last lines:\n{tail}")


def download_sdist(root: Path) -> Path:
    sdist = root / f"{SDIST_NAME}.tar.gz"
    if not sdist.is_file() or file_sha256(sdist) != SDIST_SHA256:
        sdist.unlink(missing_ok=True)
        say(f"downloading the llama-cpp-python {LLAMA_CPP_VERSION} sdist from PyPI into {root}")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-binary",
            ":all:",
            "--no-deps",
            f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            "-d",
            str(root),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not sdist.is_file():
            raise BuildFailed(
                f"pip could not download the llama-cpp-python {LLAMA_CPP_VERSION} sdist (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-600:]}; check access to PyPI (or PIP_INDEX_URL)"
            )
    actual = file_sha256(sdist)
    if actual != SDIST_SHA256:
        raise BuildFailed(f"{sdist} has sha256 {actual}, expected {SDIST_SHA256}; delete it and run again")
    return sdist


def build_llama_server(root: Path | None = None, jobs: int = 2, isa: str = "native") -> Path:
    """The path of a `llama-server` built from the pinned sdist for `isa` (in `build_root(isa)` unless `root`
    is given); built first unless already there."""
    root = build_root(isa) if root is None else root
    flags = cmake_flags(isa)
    if built_from_pinned_sdist(root, isa):
        say(f"{' and '.join(TARGETS)} already built from sdist sha256 {SDIST_SHA256[:12]}…; skipping")
        return server_binary(root)
    for tool in ("cmake", "g++", "nice"):
        if shutil.which(tool) is None:
            raise BuildFailed(f"`{tool}` is not on PATH; the llama-server build needs cmake and a C++ compiler")
    root.mkdir(parents=True, exist_ok=True)
    sdist = download_sdist(root)
    unpacked_marker = root / "src" / f".{SDIST_SHA256}"
    if not unpacked_marker.is_file():  # unpacked once: re-unpacking would make cmake recompile everything
        shutil.rmtree(root / "src", ignore_errors=True)  # a stale or half-unpacked tree must not mix in
        with tarfile.open(sdist) as archive:
            archive.extractall(root / "src", filter="data")
        unpacked_marker.touch()
    source = llama_cpp_source(root)
    if not (source / "tools" / "server").is_dir():
        raise BuildFailed(f"{sdist.name} has no vendor/llama.cpp/tools/server; is it the llama-cpp-python sdist?")

    build_dir, log_path = root / "build", root / "build.log"
    fresh = not (build_dir / "CMakeCache.txt").is_file()  # else cmake only compiles what is missing or changed
    log_path.unlink(missing_ok=True)
    say(f"building {' and '.join(TARGETS)} with {jobs} jobs under nice -n 19 (many minutes); log: {log_path}")
    started = time.perf_counter()
    run_logged(["cmake", "-S", str(source), "-B", str(build_dir), *flags], log_path, "cmake configure")
    run_logged(
        ["cmake", "--build", str(build_dir), "--target", *TARGETS, "--parallel", str(jobs)], log_path, "cmake build"
    )
    build_s = time.perf_counter() - started

    (root / "bin").mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        shutil.copy2(build_dir / "bin" / target, root / "bin" / target)
    atomic_write_json(
        root / "build.json",
        {
            "sdist": sdist.name,
            "sdist_sha256": SDIST_SHA256,
            "isa": isa,
            "cmake_flags": list(flags),
            "targets": list(TARGETS),
            "jobs": jobs,
            "build_s": round(build_s, 1),
            "fresh_build_tree": fresh,
            "cpu": cpu_description(),
            "cores": os.cpu_count(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    say(f"built {' and '.join(TARGETS)} in {build_s / 60:.1f} min")
    return server_binary(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    parser.add_argument("--isa", default="native", choices=ISAS,
                        help="native: this CPU's instructions; avx2: an AVX2-only CPU's (default native)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        binary = build_llama_server(jobs=args.jobs, isa=args.isa)
    except BuildFailed as error:
        say(str(error))
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
