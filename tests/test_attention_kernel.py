"""The compiled decode-step attention (`engines/decode/attention_kernel.py`, `decode_attention.c`): it
answers as torch's flash kernel does per row, reads only each live row's columns, and `auto` falls back
to torch's kernel, saying why, where it cannot be built."""

from __future__ import annotations

import pytest

from ray_app.engines.decode import attention_kernel
from ray_app.engines.decode.attention_kernel import (
    DecodeAttentionError,
    load_compiled,
    resolve_decode_attention,
)

pytestmark = pytest.mark.skipif(attention_kernel.compiler() is None, reason="needs a C compiler")


BUILDS = ["native", "columns", "eight", "clang"]


def variant_build(path, compiler_path, add=(), drop=()):
    """The kernel built by `compiler_path` with the engine's flags, `add`ed and without `drop`."""
    import ctypes

    flags = attention_kernel.COMPILE_FLAGS
    attention_kernel.COMPILE_FLAGS = (*(flag for flag in flags if flag not in drop), *add)
    try:
        attention_kernel.build(compiler_path, path)
    finally:
        attention_kernel.COMPILE_FLAGS = flags
    return attention_kernel.CompiledRowAttention(ctypes.CDLL(str(path)), path)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """{"native": the kernel as the engine builds it, "columns": built with -DVECTOR_PATH=0 (the
    column-at-a-time loops alone), "eight": with -DEIGHT_PATH=1 too (the 8-float path an AVX2 build runs;
    None on a CPU without AVX2 and FMA), "clang": built by clang where there is one (its own
    shuffle builtin), else None}; on a CPU without AVX-512 "native" runs the column loops too. The clang
    build leaves out OpenMP (one thread): clang's runtime is not torch's, and a second one loaded into
    this process would make `load_compiled` refuse for the tests after it; a row's bytes do not depend on
    the thread count."""
    import shutil

    folder = tmp_path_factory.mktemp("kernels")
    columns = variant_build(folder / "columns.so", attention_kernel.compiler(), add=("-DVECTOR_PATH=0",))
    assert not columns.reads_shared_prefixes
    eight = None
    if {"avx2", "fma"} <= set(attention_kernel.cpu_identity().partition(" | ")[2].split()):  # the CPU's flags
        eight_flags = ("-DVECTOR_PATH=0", "-DEIGHT_PATH=1")
        eight = variant_build(folder / "eight.so", attention_kernel.compiler(), add=eight_flags)
    clang = shutil.which("clang")
    return {
        "native": load_compiled(),
        "columns": columns,
        "eight": eight,
        "clang": clang and variant_build(folder / "clang.so", clang, add=("-Wno-psabi",), drop=("-fopenmp",)),
    }


def kernel_of(kernels, build):
    if kernels[build] is None:
        pytest.skip(f"no {build} here")
    return kernels[build]


@pytest.fixture(scope="module")
def slm(tiny_model_dir):
    from ray_app.engines.decode.loaded_slm import LoadedSlm
    from ray_app.engines.slm import SlmSettings

    return LoadedSlm(SlmSettings(model_path=tiny_model_dir, precision="fp32"), adapters={})


def flash_rows(grouped, key, value, scaling, spans):
    """torch's CPU flash kernel once per row: (output, log-sum-exp), zeros for the slots not in `spans`."""
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    output = torch.zeros(grouped.shape, dtype=grouped.dtype)
    log_sum_exp = torch.zeros(grouped.shape[:3], dtype=torch.float32)
    for slot, start in spans:
        rows = slice(slot, slot + 1)
        output[rows], log_sum_exp[rows] = flash(grouped[rows], key[rows, :, start:], value[rows, :, start:],
                                                scale=scaling)[:2]  # fmt: skip
    return output, log_sum_exp


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("head_dim", [8, 24, 64, 128])  # not whole blocks of 16 lanes, and whole ones (vectors)
def test_the_compiled_kernel_answers_each_row_as_torchs_flash_kernel(head_dim, dtype_name, build, kernels):
    """Random rows of different lengths (1 to the whole buffer, below and above blocks of 16 columns;
    padding and dead slots NaN, never read): outputs and log-sum-exps equal torch's flash kernel's to
    rounding (bf16: flash over the same bf16 numbers in fp32, our fp32 sums rounded to bf16 once); dead
    slots are left untouched. Both builds: the vector path (AVX-512) and the column-at-a-time loops."""
    import torch

    from ray_app.engines.decode.row_attention import RowSpans

    kernel = kernel_of(kernels, build)
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(head_dim)
    slots, key_heads, per, width = 6, 3, 5, 53  # 5 query heads per key head: a group of 4 and one of 1
    grouped = torch.randn(slots, key_heads, per, head_dim, generator=generator).to(dtype)
    key = torch.randn(slots, key_heads, width + 7, head_dim, generator=generator).to(dtype)[:, :, :width]
    value = torch.randn(slots, key_heads, width + 7, head_dim, generator=generator).to(dtype)[:, :, :width]
    spans = [(0, 0), (1, 17), (3, width - 1), (4, 40), (5, 3)]  # slot 2 is dead
    for slot, start in spans:
        key[slot, :, :start], value[slot, :, :start] = float("nan"), float("nan")
    key[2], value[2] = float("nan"), float("nan")
    exact = [tensor.float().nan_to_num() for tensor in (grouped, key, value)]
    expected, expected_lse = flash_rows(*exact, 0.3, spans)
    output = torch.full(grouped.shape, 7.0, dtype=dtype)
    log_sum_exp = torch.zeros(slots, key_heads, per)
    kernel(grouped, key, value, 0.3, RowSpans(tuple(spans)).tensor, output, log_sum_exp)
    live = [slot for slot, _ in spans]
    if dtype == torch.float32:
        torch.testing.assert_close(output[live], expected[live], rtol=1e-5, atol=2e-6)
    else:  # bf16: fp32's result rounded to nearest once (truncating matches ~60%); an ulp off at most
        rounded = expected[live].to(dtype)
        assert (output[live] == rounded).float().mean() >= 0.99
        torch.testing.assert_close(output[live].float(), rounded.float(), rtol=2**-7, atol=0)
    torch.testing.assert_close(log_sum_exp[live], expected_lse[live], rtol=1e-5, atol=1e-5)
    assert torch.equal(output[2], torch.full_like(output[2], 7.0))
    # a row with no columns at all adds nothing: zeros, log-sum-exp -inf
    kernel(grouped, key.nan_to_num(), value.nan_to_num(), 0.3, RowSpans(((2, width),)).tensor, output, log_sum_exp)
    assert not output[2].any() and torch.equal(log_sum_exp[2], torch.full_like(log_sum_exp[2], float("-inf")))
    with pytest.raises(ValueError, match=r"spans must be \[rows, 5\]"):
        kernel(grouped, key, value, 0.3, torch.tensor(spans), output)


def test_the_builds_answer_alike(kernels):
    """The vector path and the column-at-a-time loops add the same products in the same order: their
    fp32 outputs agree to the last bits or so (exactly, where the compiler fuses both alike); so does
    clang's build of the same source (it contracts multiply-adds into FMAs in other places than GCC)."""
    import torch

    from ray_app.engines.decode.row_attention import RowSpans

    generator = torch.Generator().manual_seed(7)
    grouped = torch.randn(4, 3, 3, 64, generator=generator)
    key, value = torch.randn(4, 3, 300, 64, generator=generator), torch.randn(4, 3, 300, 64, generator=generator)
    spans = RowSpans(((0, 0), (1, 133), (2, 280), (3, 299))).tensor
    built = {name: kernel for name, kernel in kernels.items() if kernel is not None}
    outputs = {name: torch.zeros_like(grouped) for name in built}
    for name, kernel in built.items():
        kernel(grouped, key, value, 0.125, spans, outputs[name])
    for name in built:
        torch.testing.assert_close(outputs[name], outputs["native"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("head_dim", [24, 64, 128])
def test_the_avx2_path_gives_the_column_loops_bytes(head_dim, dtype_name, kernels):
    """The 8-float path adds the same products in the same order as the column loops, its blocks of 8
    columns and its tails alike: the same bytes, outputs and log-sum-exps (rows of 1 to 300 columns)."""
    import torch

    from ray_app.engines.decode.row_attention import RowSpans

    eight, columns = kernel_of(kernels, "eight"), kernels["columns"]
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(head_dim)
    grouped = torch.randn(6, 3, 3, head_dim, generator=generator).to(dtype)
    key = torch.randn(6, 3, 301, head_dim, generator=generator).to(dtype)
    value = torch.randn(6, 3, 301, head_dim, generator=generator).to(dtype)
    spans = RowSpans(((0, 0), (1, 133), (2, 280), (3, 300), (4, 293), (5, 7))).tensor
    results = []
    for kernel in (eight, columns):
        output, log_sum_exp = torch.zeros_like(grouped), torch.zeros(6, 3, 3)
        kernel(grouped, key, value, 0.125, spans, output, log_sum_exp)
        results.append((output, log_sum_exp))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_rows_reading_a_shared_prefix_from_one_copy_give_the_bytes_they_give_over_their_own(dtype_name, build, kernels):
    """The kernel reads a sharing row's prefix from the group's copy, in the row's own pass: with every copy
    equal, each row's output is the very bytes it gives over its own columns, and the other copies are
    never read (NaN there changes nothing)."""
    import torch

    from ray_app.engines.decode.row_attention import RowSpans, SharedPrefix
    from tests.attention_rows import SHARING, STARTS, rows_sharing_a_prefix

    length = 21  # a block of 16 columns and a tail, straddling the prefix's end
    _, query, key, value = rows_sharing_a_prefix(width=60, head_dim=64, length=length, heads=9, key_heads=3)
    query, key, value = (tensor.to(getattr(torch, dtype_name)) for tensor in (query, key, value))
    grouped = query.reshape(len(STARTS), 3, 3, 64)
    own = torch.zeros_like(grouped)
    kernel_of(kernels, build)(grouped, key, value, 0.3, RowSpans(tuple(enumerate(STARTS))).tensor, own)
    for slot in SHARING[1:]:
        key[slot, :, STARTS[slot] : STARTS[slot] + length] = float("nan")
        value[slot, :, STARTS[slot] : STARTS[slot] + length] = float("nan")
    shared = RowSpans(tuple((slot, start + (length if slot in SHARING else 0)) for slot, start in enumerate(STARTS)),
                      (SharedPrefix(SHARING, source=SHARING[0], start=STARTS[SHARING[0]], length=length),))  # fmt: skip
    output = torch.zeros_like(grouped)
    kernel_of(kernels, build)(grouped, key, value, 0.3, shared.tensor, output)
    assert torch.equal(output, own)


@pytest.mark.parametrize("build", BUILDS)
def test_row_attention_with_the_kernel_equals_it_without(build, kernels):
    """`row_attention_forward` given the compiled kernel (as the engine's running batch passes it) equals
    the per-row flash loop, with and without a shared prefix (read in each row's pass by the vector path,
    else torch's flash call for the group merged with the kernel's part); the kernel reports the tensors
    it takes."""
    import torch

    from ray_app.engines.decode.row_attention import RowSpans, SharedPrefix, row_attention_forward
    from tests.attention_rows import STARTS, rows_sharing_a_prefix

    length = 9
    module, query, key, value = rows_sharing_a_prefix(width=30, head_dim=16, length=length)
    starts = STARTS
    kernel = kernel_of(kernels, build)
    assert kernel.supports(key) and kernel.supports(key.bfloat16()) and not kernel.supports(key.transpose(2, 3))
    assert not kernel.supports(key.half())
    spans = RowSpans(tuple(enumerate(starts)))
    with_kernel, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=spans,
                                           row_kernel=kernel)  # fmt: skip
    without, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=list(spans))
    torch.testing.assert_close(with_kernel, without, rtol=1e-5, atol=1e-6)
    half = [tensor.bfloat16() for tensor in (query, key, value)]
    with_kernel, _ = row_attention_forward(module, *half, None, scaling=0.3, row_spans=spans, row_kernel=kernel)
    without, _ = row_attention_forward(module, *half, None, scaling=0.3, row_spans=list(spans))
    assert with_kernel.dtype == torch.bfloat16  # bf16 rows through the kernel: torch's bf16 rounding aside, the same
    torch.testing.assert_close(with_kernel.float(), without.float(), rtol=2**-6, atol=1e-3)
    with pytest.raises(ValueError, match="share one dtype"):
        kernel(half[0].reshape(5, 2, 3, 16), half[1].float(), half[2].float(), 0.3, spans.tensor, torch.zeros(1))
    without, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=list(spans))
    after_prefix = RowSpans(
        tuple((slot, start + (length if slot in (0, 2, 4) else 0)) for slot, start in enumerate(starts)),
        (SharedPrefix((0, 2, 4), source=0, start=starts[0], length=length),),
    )
    with_kernel, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=after_prefix,
                                           row_kernel=kernel)  # fmt: skip
    torch.testing.assert_close(with_kernel, without, rtol=1e-5, atol=1e-6)
    merged, _ = row_attention_forward(module, query, key, value, None, scaling=0.3, row_spans=after_prefix)
    torch.testing.assert_close(with_kernel, merged, rtol=1e-5, atol=1e-6)  # torch's kernel: flash, merged
    with_kernel, _ = row_attention_forward(module, *half, None, scaling=0.3, row_spans=after_prefix, row_kernel=kernel)
    assert with_kernel.dtype == torch.bfloat16  # bf16 rows sharing a prefix through the kernel
    torch.testing.assert_close(with_kernel.float(), without, rtol=2**-6, atol=1e-2)


def test_the_engine_decodes_with_the_compiled_kernel_and_says_so(slm):
    """The test engine (CPU, `auto`) runs its decode steps through the compiled kernel and its description
    names it; the library is kept under the kernel root, named by source, compiler and CPU."""
    description = slm.decode_attention
    assert description.kernel == "compiled" and description.compiled is not None
    assert "built for this CPU" in description.reason
    assert description.compiled.path.exists() and description.compiled.path.name.startswith("decode_attention-")
    has_avx512 = " avx512f " in f" {attention_kernel.cpu_identity().split('|')[-1]} "
    assert description.compiled.reads_shared_prefixes == has_avx512  # the vector path: built for AVX-512
    assert resolve_decode_attention("auto", "bf16", "cpu").kernel == "compiled"  # a bf16 model's too


def test_the_kernel_runs_on_torchs_own_openmp_runtime_and_refuses_a_second(monkeypatch):
    """Loaded, the process maps one OpenMP runtime (torch's libgomp: one team of threads on the cores); a
    process that maps two (a torch built on Intel's libiomp) keeps torch's kernel, saying why."""
    load_compiled()
    assert len(attention_kernel.openmp_runtimes()) == 1
    monkeypatch.setattr(attention_kernel, "openmp_runtimes", lambda: {"libgomp.so.1", "libiomp5.so"})
    load_compiled.cache_clear()
    try:
        choice = resolve_decode_attention("auto", "fp32", "cpu")
        assert choice.kernel == "torch" and "two OpenMP runtimes (libgomp.so.1, libiomp5.so)" in choice.reason
    finally:
        load_compiled.cache_clear()


def test_auto_takes_torchs_kernel_without_a_compiler_and_compiled_fails(monkeypatch):
    monkeypatch.setattr(attention_kernel, "compiler", lambda: None)
    load_compiled.cache_clear()
    try:
        choice = resolve_decode_attention("auto", "fp32", "cpu")
        assert choice.kernel == "torch" and choice.compiled is None
        assert "no C compiler" in choice.reason
        with pytest.raises(DecodeAttentionError, match="no C compiler"):
            resolve_decode_attention("compiled", "fp32", "cpu")
    finally:
        load_compiled.cache_clear()
    assert resolve_decode_attention("torch", "fp32", "cpu").reason == "torch as asked"
    assert resolve_decode_attention("auto", "fp32", "cuda").kernel == "torch"
    assert "no C compiler" in resolve_decode_attention("auto", "bf16", "cpu").reason  # bf16 needs it too
    in_fp16 = resolve_decode_attention("compiled", "fp16", "cpu")  # no fp16 kernel: torch's, and says so
    assert in_fp16.kernel == "torch" and in_fp16.compiled is None and "for fp32 and bf16 models" in in_fp16.reason
    with pytest.raises(ValueError, match="must be one of auto, torch, compiled"):
        resolve_decode_attention("fast", "fp32", "cpu")


def test_a_failed_build_names_the_compiler_error_and_leaves_no_partial_library(monkeypatch, tmp_path):
    broken = tmp_path / "decode_attention.c"
    broken.write_text("this is not C\n", encoding="utf-8")
    monkeypatch.setattr(attention_kernel, "SOURCE", broken)
    load_compiled.cache_clear()
    try:
        with pytest.raises(DecodeAttentionError, match="failed: .*error"):
            load_compiled(tmp_path / "kernels")
        assert resolve_decode_attention("auto", "fp32", "cpu").kernel == "torch"
    finally:
        load_compiled.cache_clear()
    assert list((tmp_path / "kernels").iterdir()) == []
