"""Per-step time and peak memory: FP32 training, fixed 4-bit QAT, the SBS step, the multipath step.

Usage::

    .venv/bin/python benchmarks/search_overhead.py --models resnet20 mobilenetv2 --batch 64 \
        --out benchmarks/results/search_overhead.json [--profile]

Method:

* Time: the four configurations of one model live in one process and are timed round-robin
  (``--repeats`` rounds of ``--steps`` steps each, after ``--warmup`` steps), so load from other
  processes hits them alike; per-step time is the median over rounds. Ratios are of medians.
* Memory: one subprocess per configuration (run before the timing, while this process is
  small) builds the model, resets its peak resident set size (``/proc/self/clear_refs``; falls
  back to ``ru_maxrss``), runs ``--mem-steps`` steps and reads the peak (``VmHWM``); the growth
  over the RSS after setup is the memory a training step needs beyond the model and optimiser
  (activations kept for the backward pass, gradients, temporaries, allocator slack).
* ``--device cuda``: times are taken between ``torch.cuda.synchronize()`` calls, and memory is
  the growth of ``torch.cuda.max_memory_allocated`` over the allocation after setup (the
  caching allocator's peak of live tensors), in the same per-configuration subprocesses.
* Same model, same random CIFAR-shaped batch, same thread count for all. SBS and multipath pay
  the BOPs cost (``lambda`` 0.1); 4-bit QAT is ``set_fixed(4, 4)`` on every non-pinned layer.

* Quantiser variants (issue 16), timed and probed beside the four: ``sbs`` is the default (fused
  quantisers, eager; on CPU their numba kernels where numba imports); ``--variants`` (default
  ``sbs_reference sbs_torch_kernels``) adds the reference layer code (``sbs_reference``) and the
  fused path on its torch kernels (``sbs_torch_kernels``, numba off); ``--compile`` adds
  ``sbs_compile`` (fused, kernels under ``torch.compile``; its compilation runs in the warm-up
  steps, and its memory probe takes one warm-up step before the reset, so its memory is not
  comparable with a cold first step). The numba kernels are loaded (compiled on a cold cache)
  before a probe's reset too. Ratios ``sbs_vs_<variant>_time``, ``<variant>_vs_fp32_time`` and
  ``<variant>_vs_fp32_memory`` go into the JSON.

``--profile`` adds the top operators of the SBS step (``torch.profiler``, self CPU time) and the
hwsbs functions they come from (``cProfile``, cumulative time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from cost_models import build_cost_model
from hwsbs.methods.multipath import MultiPathSearch
from hwsbs.models import build_model
from hwsbs.quant.compiled import kernels_compiled
from hwsbs.quant.fused_layers import use_fused
from hwsbs.quant.numba_kernels import numba_kernels_enabled, use_numba_kernels, warm_up
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective, SearchEngine
from hwsbs.training import make_sgd, split_decay

__all__ = ["CONFIGS", "VARIANTS", "make_step", "machine_info", "add_output_options", "write_report"]

CONFIGS = ("fp32", "qat4", "sbs", "multipath")
#: The SBS step with other quantiser implementations (issue 16): name -> (fused, compiled, numba).
#: "sbs" itself is the default: fused, eager, numba kernels on CPU (where numba imports).
VARIANTS = {
    "sbs_reference": (False, False, False),
    "sbs_torch_kernels": (True, False, False),
    "sbs_compile": (True, True, False),
}


def machine_info() -> dict[str, object]:
    """CPU model, cores and library versions, for the record."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def write_report(report: dict[str, object], out: str | None) -> None:
    """Print ``report`` as indented JSON, and write it to ``out`` too (its folder made) where given."""
    text = json.dumps(report, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


def add_output_options(p: argparse.ArgumentParser, name: str, results: str) -> None:
    """``--threads``, ``--out-dir`` (runs/NAME) and the result files ``--json``/``--png``
    (benchmarks/results/RESULTS.json, .png) of a benchmark that runs searches."""
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default=f"runs/{name}")
    p.add_argument("--json", default=f"benchmarks/results/{results}.json")
    p.add_argument("--png", default=f"benchmarks/results/{results}.png")


def _batch(batch: int, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
    return x.to(device), y.to(device)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One plain SGD training step of ``model`` on (x, y) (cross-entropy, the pipeline's lr and decay)."""
    opt = make_sgd(*split_decay(model), 0.01, 5e-4)

    def sgd_step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return sgd_step


def _search_step(searcher: SearchEngine | MultiPathSearch, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One search step of ``searcher`` on (x, y)."""

    def search_step() -> None:
        searcher.step(x, y)

    return search_step


def _variant(step: Callable[[], None], fused: bool, compiled: bool, numba: bool) -> Callable[[], None]:
    """``step`` run with the fused or reference quantisers, compiled or eager, numba kernels or not
    (process-wide switches, set around each step so variants can be timed round-robin in one process)."""

    def variant_step() -> None:
        old, old_numba = use_fused(fused), use_numba_kernels(numba)
        try:
            with kernels_compiled(compiled):
                step()
        finally:
            use_fused(old)
            use_numba_kernels(old_numba)

    variant_step.model = step.model  # type: ignore[attr-defined]
    return variant_step


def make_step(model_name: str, config: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """A closure performing one training step of ``config`` on (x, y); its ``model`` attribute is
    the module it trains."""
    if config in VARIANTS:
        return _variant(make_step(model_name, "sbs", x, y), *VARIANTS[config])
    torch.manual_seed(0)
    model = build_model(model_name, 10, 3, (32, 32)).to(x.device)
    if config == "fp32":
        step = _sgd_step(model, x, y)
        step.model = model  # type: ignore[attr-defined]
        return step
    space = convert_model(model, x[:8], (2, 4, 8), prune=config == "sbs")
    objectives = [CostObjective(build_cost_model("bops"))]
    if config == "qat4":
        for _, layer in space.layers():
            if not layer.pinned:
                layer.set_fixed(4, 4)
            else:
                layer.set_fixed(layer.fixed_w_bits, layer.fixed_a_bits)
        step = _sgd_step(space.model, x, y)
    elif config in ("sbs", "multipath"):  # the same hyperparameters for both searches
        searcher = (SearchEngine if config == "sbs" else MultiPathSearch)(space, objectives, 0.1, 0.01, 0.05, 5e-4)
        step = _search_step(searcher, x, y)
    else:
        raise ValueError(f"unknown configuration {config!r}")
    step.model = space.model  # type: ignore[attr-defined]
    return step


def time_model(
    model_name: str, batch: int, warmup: int, steps: int, repeats: int, device: str = "cpu", configs: tuple = CONFIGS
) -> dict[str, dict[str, float]]:
    """Round-robin timing of every configuration of one model, in this process."""
    x, y = _batch(batch, device=device)
    fns = {c: make_step(model_name, c, x, y) for c in configs}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(repeats):
        for c, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            samples[c].append((time.perf_counter() - t0) / steps)
    return {c: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for c, v in samples.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_probe(model_name: str, config: str, batch: int, steps: int, device: str = "cpu") -> dict[str, float | str]:
    """Peak RSS growth (MiB) over ``steps`` steps, after setup; run in a fresh process.

    Linux keeps the peak RSS (``VmHWM``) across fork and exec, so a child's ``ru_maxrss`` can
    start at its parent's size; resetting the peak through ``/proc/self/clear_refs`` after setup
    makes the measurement independent of who started the probe.
    """
    x, y = _batch(batch, device=device)
    fn = make_step(model_name, config, x, y)
    warmed = VARIANTS.get(config, (True, False, True))[1]
    if warmed:
        fn()  # compiling is setup, not the step's memory
    elif VARIANTS.get(config, (True, False, True))[2] and numba_kernels_enabled():
        warm_up()  # so is loading (or compiling) the numba kernels
    if torch.device(device).type == "cuda":
        fn()  # the first step allocates optimiser state and the cost term's tables
        torch.cuda.synchronize()
        before_b = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        peak_b = torch.cuda.max_memory_allocated()
        mib = 1024.0**2
        return {
            "allocated_after_setup_mib": before_b / mib,
            "step_peak_growth_mib": (peak_b - before_b) / mib,
            "peak_mib": peak_b / mib,
            "method": "torch.cuda.max_memory_allocated growth",
        }
    rss = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after /proc/self/clear_refs reset"
        before = rss
    except OSError:
        method = "ru_maxrss (peak could not be reset)"
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(steps):
        fn()
    if warmed:  # the first (calibrating) step ran before the reset: not comparable with the others
        method += "; after one warm-up step (compilation), so lower than a cold first step"
    after = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rss_after_setup_mib": rss / 1024,
        "step_peak_growth_mib": (after - before) / 1024,
        "peak_mib": after / 1024,
        "method": method,
    }


def _memory(
    model_name: str, batch: int, steps: int, device: str = "cpu", configs: tuple[str, ...] = CONFIGS
) -> dict[str, dict[str, float]]:
    out = {}
    for c in configs:
        cmd = [
            sys.executable,
            __file__,
            "--probe",
            model_name,
            c,
            "--batch",
            str(batch),
            "--mem-steps",
            str(steps),
            "--threads",
            str(torch.get_num_threads()),
            "--device",
            device,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[c] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def profile_sbs(model_name: str, batch: int, top: int = 12, device: str = "cpu") -> dict[str, object]:
    """Where the SBS step's time goes: top operators (torch.profiler, self CPU time) and the
    hwsbs functions that issue them (cProfile, cumulative time; this torch build records no
    Python stacks in the profiler). Shares are of the profiled step time."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    x, y = _batch(batch, device=device)
    fn = make_step(model_name, "sbs", x, y)
    for _ in range(2):
        fn()
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(3):
            fn()
        _sync(device)
    ops = prof.key_averages()

    def self_time(e: object) -> float:  # GPU kernel time on CUDA, CPU time otherwise
        return float(getattr(e, "self_device_time_total", 0.0)) if cuda else float(e.self_cpu_time_total)  # type: ignore[attr-defined]

    total = sum(self_time(e) for e in ops) or 1.0
    top_ops = sorted(ops, key=self_time, reverse=True)[:top]
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        fn()
    pr.disable()
    stats = pstats.Stats(pr).stats  # type: ignore[attr-defined]
    step_total = max((v[3] for k, v in stats.items() if k[2] == "step"), default=1.0)
    funcs = [
        (f"{Path(k[0]).as_posix().split('/hwsbs/')[-1]}:{k[1]}({k[2]})", v[3])
        for k, v in stats.items()
        if "/hwsbs/" in Path(k[0]).as_posix() or k[2] == "backward"
    ]
    funcs.sort(key=lambda kv: kv[1], reverse=True)
    return {
        "ops": [{"op": e.key, "self_share": self_time(e) / total, "calls_per_step": e.count / 3} for e in top_ops],
        "functions": [{"where": k, "cumulative_share": v / step_total} for k, v in funcs[:top]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="steps per timing round")
    p.add_argument("--repeats", type=int, default=7, help="timing rounds (median taken)")
    p.add_argument("--mem-steps", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also profile the SBS step")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument(
        "--variants",
        nargs="*",
        default=["sbs_reference", "sbs_torch_kernels"],
        choices=sorted(VARIANTS),
        help="SBS variants",
    )
    p.add_argument("--compile", action="store_true", help="also time the SBS step with --compile (sbs_compile)")
    p.add_argument("--probe", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(memory_probe(args.probe[0], args.probe[1], args.batch, args.mem_steps, args.device)))
        return 0
    machine = machine_info()
    if torch.device(args.device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
        machine["cuda"] = torch.version.cuda
    report: dict[str, object] = {
        "machine": machine,
        "device": args.device,
        "batch": args.batch,
        "image": [3, 32, 32],
        "command": " ".join(["benchmarks/search_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "threads": torch.get_num_threads(),
        "models": {},
    }
    variants = tuple(dict.fromkeys([*args.variants, *(["sbs_compile"] if args.compile else [])]))
    configs = (*CONFIGS, *variants)
    # While this process is small.
    mems = {m: _memory(m, args.batch, args.mem_steps, args.device, configs) for m in args.models}
    for m in args.models:
        mem = mems[m]
        times = time_model(m, args.batch, args.warmup, args.steps, args.repeats, args.device, configs)
        fp, mp = times["fp32"]["median_s"], times["multipath"]["median_s"]
        entry: dict[str, object] = {
            "time": times,
            "memory": mem,
            "ratios": {
                "sbs_vs_fp32_time": times["sbs"]["median_s"] / fp,
                "qat4_vs_fp32_time": times["qat4"]["median_s"] / fp,
                "multipath_vs_fp32_time": mp / fp,
                "sbs_vs_multipath_time": times["sbs"]["median_s"] / mp,
                "sbs_vs_multipath_memory": mem["sbs"]["step_peak_growth_mib"]
                / max(mem["multipath"]["step_peak_growth_mib"], 1e-9),
                "sbs_vs_fp32_memory": mem["sbs"]["step_peak_growth_mib"]
                / max(mem["fp32"]["step_peak_growth_mib"], 1e-9),
            },
        }
        ratios = entry["ratios"]
        for v in variants:  # e.g. sbs_reference_vs_fp32_time, sbs_vs_sbs_reference_time
            assert isinstance(ratios, dict)
            ratios[f"{v}_vs_fp32_time"] = times[v]["median_s"] / fp
            ratios[f"sbs_vs_{v}_time"] = times["sbs"]["median_s"] / times[v]["median_s"]
            ratios[f"{v}_vs_fp32_memory"] = mem[v]["step_peak_growth_mib"] / max(
                mem["fp32"]["step_peak_growth_mib"], 1e-9
            )
        if args.profile:
            entry["sbs_profile"] = profile_sbs(m, args.batch, device=args.device)
        report["models"][m] = entry  # type: ignore[index]
        print(json.dumps({m: entry["ratios"]}), file=sys.stderr, flush=True)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
