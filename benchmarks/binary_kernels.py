"""APB's bitwise kernels against FP32 GEMM, oneDNN int8 and the 2-bit path, in one process.

``python benchmarks/binary_kernels.py --threads 1 [--repeats 5] [--act-bits 8] [--fp-share 0.05]``
prints JSON: ``{"machine": {...}, "speedup_vs_fp32": {"MxKxN": x, ...}, "seconds": {...}}``.
Each shape runs every kernel round-robin ``repeats`` times; medians are reported. The APB time is
the packing of the activations' bit planes and the binary GEMM (AND + popcount over them) plus the CSR outlier GEMM on
``--fp-share`` of the weights. The 2-bit path is what hwsbs exports 2-bit layers to on x86: the
int8 kernel on 2-bit codes (there is no narrower native kernel), so it times like int8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from cost_models.apb_cpu import binary_seconds, sparse_seconds
from hardware_profiles import load_profile
from hwsbs.apb.kernels import HAVE_NUMBA, binary_gemm_codes, csr_gemm, pack_bits, to_csr

#: M x K x N: the square reference and ResNet-20 CIFAR layers as im2col GEMMs (batch 1).
SHAPES = [(1024, 1024, 1024), (1024, 144, 16), (256, 288, 32), (64, 576, 64), (64, 64, 10)]


def _machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "numba": HAVE_NUMBA}


def _kernels(m: int, k: int, n: int, act_bits: int, fp_share: float) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(0)
    a, b = torch.randn(m, k), torch.randn(k, n)
    ai, bi = torch.randint(-128, 128, (m, k), dtype=torch.int8), torch.randint(-128, 128, (k, n), dtype=torch.int8)
    a2 = torch.randint(-2, 2, (m, k), dtype=torch.int8)  # 2-bit codes on the int8 kernel
    signs = pack_bits(rng.random((n, k)) < 0.5)
    codes = rng.integers(0, 2**act_bits, (m, k)).astype(np.int32)
    sparse = np.where(rng.random((n, k)) < fp_share, rng.standard_normal((n, k)), 0.0).astype(np.float32)
    values, cols, indptr = to_csr(sparse)
    xf = codes.astype(np.float64)

    def apb() -> object:
        binary_gemm_codes(signs, codes, act_bits)  # packs the activation bit planes: part of the cost
        return csr_gemm(values, cols, indptr, xf)

    return {
        "fp32": lambda: a @ b,
        "int8_onednn": lambda: torch._int_mm(ai, bi),
        "int2_path": lambda: torch._int_mm(a2, bi),
        "apb": apb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--act-bits", type=int, default=8)
    p.add_argument("--fp-share", type=float, default=0.05)
    p.add_argument(
        "--profile", default="x86-avx512", help="whose binary_kernels block predicts the APB times (apb_cpu's model)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seconds: dict[str, dict[str, float]] = {}
    for m, k, n in SHAPES:
        kernels = _kernels(m, k, n, args.act_bits, args.fp_share)
        for fn in kernels.values():  # warm-up (numba compiles on the first call)
            fn()
        times: dict[str, list[float]] = {name: [] for name in kernels}
        for _ in range(args.repeats):
            for name, fn in kernels.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        seconds[f"{m}x{k}x{n}"] = {name: statistics.median(ts) for name, ts in times.items()}
    kernels = load_profile(args.profile).binary_kernels
    predicted = {}
    if kernels is not None:  # the apb_cpu model's prediction of the same calls, from the profile's fit
        for m, k, n in SHAPES:
            outliers = round(args.fp_share * n * k)
            apb = binary_seconds(kernels, m, n, k, args.act_bits) + sparse_seconds(kernels, m, k, outliers)
            predicted[f"{m}x{k}x{n}"] = {"apb_s": apb, "measured_over_predicted": seconds[f"{m}x{k}x{n}"]["apb"] / apb}
    speedup = {shape: {name: t["fp32"] / v for name, v in t.items() if name != "fp32"} for shape, t in seconds.items()}
    print(
        json.dumps(
            {
                "machine": _machine(),
                "threads": args.threads,
                "act_bits": args.act_bits,
                "fp_share": args.fp_share,
                "speedup_vs_fp32": {shape: s["apb"] for shape, s in speedup.items()},
                "speedup_vs_fp32_all": speedup,
                "seconds": seconds,
                "apb_cpu_predicted": {"profile": args.profile, "shapes": predicted},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
