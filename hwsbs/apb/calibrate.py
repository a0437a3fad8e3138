"""Measure APB's kernels on this CPU and fit the ``binary_kernels`` block the ``apb_cpu`` model reads.

Each kernel is timed over a grid of GEMM shapes (``M`` output positions, ``K`` weights per row,
``N`` rows, activation bit planes) and fitted, in relative error, to a fixed per-call term plus
work over rate (non-negative least squares): small layers are dominated by the per-call work
(packing setup, transposes, allocation), large ones by the rates, and one rate alone could not
fit both (a two-rate fit without the per-call term was ill-conditioned on ResNet-20's shapes).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.optimize import nnls

from hardware_profiles.errors import ProfileError
from hardware_profiles.loader import load_profile
from hardware_profiles.schema import BinaryGemmSpeed, BinaryKernels, KernelSpeed, SparseGemmSpeed

from .kernels import binary_gemm_codes, csr_gemm, pack_bits, to_csr

__all__ = [
    "GemmShape",
    "DEFAULT_SHAPES",
    "QUICK_SHAPES",
    "fit_speed",
    "measure_binary_kernels",
    "kernels_yaml",
    "append_to_profile",
]

#: Share of a layer's weights kept as full-precision outliers in the sparse kernel's timings.
OUTLIER_SHARE = 0.05


@dataclass(frozen=True)
class GemmShape:
    """One timed GEMM: ``m`` positions x ``k`` weights per row x ``n`` rows, ``a_bits`` planes."""

    m: int
    k: int
    n: int
    a_bits: int = 8


#: M, K and N each varied over ResNet-20-sized and larger values, with 2 and 8 activation planes,
#: so the per-call term and every rate are identifiable.
DEFAULT_SHAPES: tuple[GemmShape, ...] = tuple(
    GemmShape(m, k, n, bits)
    for m in (64, 256, 1024)
    for k in (64, 576, 2304)
    for n in (16, 64, 256)
    for bits in ((2, 8) if (m, k, n) in ((256, 576, 64), (1024, 2304, 256), (64, 64, 16)) else (8,))
)
#: A small grid for tests and a quick look (seconds, not minutes).
QUICK_SHAPES: tuple[GemmShape, ...] = tuple(
    GemmShape(m, k, n, bits) for m in (16, 128) for k in (64, 256) for n in (8, 32) for bits in (2, 8)
)


def fit_speed(work: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit ``seconds ~ c0 + work @ c[1:]`` with every ``c >= 0``, minimising relative error.

    Args:
        work: ``[calls, terms]`` work units of each call (MACs, word operations, ...).
        seconds: ``[calls]`` measured seconds.

    Returns:
        ``(c, median |relative error|)``, ``c[0]`` seconds per call and ``c[i]`` seconds per unit.

    Raises:
        ProfileError: a work term got no positive coefficient (the timings cannot identify it).
    """
    design = np.column_stack([np.ones(len(seconds)), work]) / seconds[:, None]
    coef, _ = nnls(design, np.ones(len(seconds)))
    if np.any(coef[1:] <= 0):
        raise ProfileError(
            "binary_kernels: the kernel timings do not determine every rate (a fitted rate came out "
            "infinite); measure again on a quiet machine with more --repeats"
        )
    predicted = np.column_stack([np.ones(len(seconds)), work]) @ coef
    return coef, float(np.median(np.abs(predicted / seconds - 1)))


def _kernel_calls(shape: GemmShape, rng: np.random.Generator) -> dict[str, Callable[[], object]]:
    m, k, n, bits = shape.m, shape.k, shape.n, shape.a_bits
    signs = pack_bits(rng.random((n, k)) < 0.5)
    codes = rng.integers(0, 2**bits, (m, k)).astype(np.int32)
    sparse = np.where(rng.random((n, k)) < OUTLIER_SHARE, rng.standard_normal((n, k)), 0.0).astype(np.float32)
    values, cols, indptr = to_csr(sparse)
    xf = codes.astype(np.float64)
    a, b = torch.randn(m, k), torch.randn(k, n)
    ai = torch.randint(-128, 128, (max(m, 17), k), dtype=torch.int8)  # torch._int_mm needs m > 16
    bi = torch.randint(-128, 128, (k, -(-n // 8) * 8), dtype=torch.int8)  # and n a multiple of 8
    return {
        "binary_gemm": lambda: binary_gemm_codes(signs, codes, bits),
        "sparse_gemm": lambda: csr_gemm(values, cols, indptr, xf),
        "int8_gemm": lambda: torch._int_mm(ai, bi),
        "fp32_gemm": lambda: a @ b,
    }


def _work(shape: GemmShape, kernel: str) -> list[float]:
    m, k, n, bits = shape.m, shape.k, shape.n, shape.a_bits
    if kernel == "binary_gemm":
        return [m * n * -(-k // 64) * bits, m * k * bits]  # word operations, packed activation bits
    if kernel == "sparse_gemm":  # outlier MACs, and the activations it transposes
        return [m * round(OUTLIER_SHARE * n * k), m * k]
    return [m * k * n]


def _sig(value: float) -> float:
    """Four significant digits: the timings' noise is larger, and the profile stays readable."""
    return float(f"{float(value):.4g}")


def measure_binary_kernels(
    shapes: Sequence[GemmShape] = DEFAULT_SHAPES, repeats: int = 7, threads: int = 1, seed: int = 0
) -> BinaryKernels:
    """Time APB's kernels (and the dense int8 / FP32 GEMMs beside them) and fit their speeds.

    Args:
        shapes: the GEMMs to time (:data:`DEFAULT_SHAPES`; :data:`QUICK_SHAPES` for a quick look).
        repeats: timed calls per kernel and shape (the median is fitted), after two warm-up calls
            (numba compiles on the first).
        threads: torch threads (the numba kernels run on one).
        seed: the random operands' seed.

    Returns:
        The profile block, with the machine it ran on and the fit's median relative error.
    """
    from hwsbs.lut.machine import describe_machine, machine_info
    from hwsbs.lut.timing import fixed_threads, sample_times

    rng = np.random.default_rng(seed)
    timed: dict[str, list[tuple[list[float], float]]] = {}
    with fixed_threads(threads):
        for shape in shapes:
            for kernel, call in _kernel_calls(shape, rng).items():
                median = statistics.median(sample_times(call, warmup=2, repeats=repeats, min_time_s=0.02))
                timed.setdefault(kernel, []).append((_work(shape, kernel), median))
        machine = describe_machine(machine_info("cpu", threads))
    fits: dict[str, tuple[np.ndarray, float]] = {}
    for kernel, rows in timed.items():
        fits[kernel] = fit_speed(np.array([w for w, _ in rows], dtype=float), np.array([t for _, t in rows]))

    def dense(kernel: str) -> KernelSpeed:
        coef = fits[kernel][0]
        return KernelSpeed(per_call_s=_sig(coef[0]), macs_per_s=_sig(1 / coef[1]))

    binary, sparse = fits["binary_gemm"][0], fits["sparse_gemm"][0]
    errors = ", ".join(f"{kernel} {100 * err:.1f}%" for kernel, (_, err) in fits.items())
    return BinaryKernels(
        measured_on=machine,
        threads=threads,
        binary_gemm=BinaryGemmSpeed(
            per_call_s=_sig(binary[0]), word_ops_per_s=_sig(1 / binary[1]), packed_bits_per_s=_sig(1 / binary[2])
        ),
        sparse_gemm=SparseGemmSpeed(
            per_call_s=_sig(sparse[0]), macs_per_s=_sig(1 / sparse[1]), activations_per_s=_sig(1 / sparse[2])
        ),
        int8_gemm=dense("int8_gemm"),
        fp32_gemm=dense("fp32_gemm"),
        fit=f"median |relative error| over {len(shapes)} shapes, {repeats} repeats each: {errors}",
    )


def kernels_yaml(kernels: BinaryKernels) -> str:
    """The ``binary_kernels:`` block as YAML, ready to paste into (or append to) a profile."""
    block = kernels.model_dump(mode="json")
    return yaml.safe_dump({"binary_kernels": block}, sort_keys=False, width=1000)


def append_to_profile(path: str | Path, kernels: BinaryKernels) -> None:
    """Append the block to the profile file at ``path`` (its comments and layout kept).

    Raises:
        ProfileError: the file is not a valid profile, already has a ``binary_kernels`` block,
            or would not validate with it (the file is then left as it was).
    """
    path = Path(path)
    profile = load_profile(path)
    if profile.binary_kernels is not None:
        raise ProfileError(f"{path}: binary_kernels: already present; remove the block to measure again")
    before = path.read_text(encoding="utf-8")
    path.write_text(before.rstrip("\n") + "\n" + kernels_yaml(kernels), encoding="utf-8")
    try:
        load_profile(path)
    except ProfileError:
        path.write_text(before, encoding="utf-8")
        raise
