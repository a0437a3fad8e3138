"""What a measurement ran on: CPU model, cores, instruction sets, PyTorch and kernel facts."""

from __future__ import annotations

import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from cost_models.apb_cpu import APBCpuCostModel
from cost_models.lut import LutCostModel

__all__ = [
    "machine_info",
    "describe_machine",
    "measured_elsewhere",
    "warn_if_measured_elsewhere",
    "load_average",
    "busy_reason",
    "warn_if_busy",
]

_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def machine_info(
    device: torch.device | str = "cpu", threads: int | None = None, runtime: str = "torch"
) -> dict[str, Any]:
    """Facts about the machine and software a latency table is measured with (``runtime``:
    ``torch`` or ``onnxruntime``, recorded with its version)."""
    from hwsbs.export.kernels import onednn_available, onednn_saturates

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu.get("model name", platform.processor() or platform.machine()),
        "cpu_family": cpu.get("cpu family", ""),
        "cpu_model": cpu.get("model", ""),
        "cores": cores,
        "isa": [f for f in _FLAGS if f in flags],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "device": str(device),
        "onednn_int8": onednn_available(),
        "int16_pair_saturation": onednn_saturates(),
        "runtime": "torch",
    }
    if runtime != "torch":
        from .ort_runtime import runtime_version

        info["runtime"] = runtime_version(runtime)
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a table's ``device`` field."""
    if "gpu" in info:
        return f"{info['gpu']} (CUDA {info.get('cuda')}), torch {info['torch']}"
    isa = ", ".join(info["isa"]) or "no AVX2"
    vnni = "VNNI" if any("vnni" in f for f in info["isa"]) else "no VNNI"
    sat = "int8 pair sums saturate int16" if info["int16_pair_saturation"] else "int8 accumulates in int32"
    threads = f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}"
    runtime = info.get("runtime", "torch")
    line = (
        f"{info['cpu']} (family {info['cpu_family']} model {info['cpu_model']}), {info['cores']} cores "
        f"({isa}; {vnni}), {threads}, torch {info['torch']}, "
        f"oneDNN int8 {'yes' if info['onednn_int8'] else 'no'} ({sat})"
    )
    return line if runtime == "torch" else f"{line}, runtime {runtime}"


#: The CPU part of a table's ``device`` line, as ``describe_machine`` writes it.
_CPU_LINE = re.compile(r"^(?P<cpu>.+?) \(family (?P<family>[^ ]*) model (?P<model>[^)]*)\)")


def measured_elsewhere(table_device: str, info: dict[str, Any] | None = None) -> str | None:
    """Why a CPU table's measurements may not hold on this machine (another CPU), else None.

    Tables name their CPU as :func:`describe_machine` writes it; a table whose device line says
    otherwise (a GPU, or written by hand) is not judged.
    """
    found = _CPU_LINE.match(table_device)
    if found is None:
        return None
    here = info if info is not None else machine_info("cpu")
    theirs = (found["cpu"], found["family"], found["model"])
    ours = (str(here["cpu"]), str(here["cpu_family"]), str(here["cpu_model"]))
    if theirs == ours:
        return None
    return (
        f"measured on {theirs[0]} (family {theirs[1]} model {theirs[2]}), but this machine is "
        f"{ours[0]} (family {ours[1]} model {ours[2]})"
    )


def warn_if_measured_elsewhere(cost_model: Any) -> None:
    """One warning when ``cost_model`` reads CPU measurements taken on another CPU: a lookup
    table (``lut``), or the APB kernel speeds (``apb_cpu``, the profile's ``binary_kernels``)."""
    profile = getattr(cost_model, "profile", None)
    if profile is None:
        return
    if isinstance(cost_model, LutCostModel) and profile.kind == "cpu":
        what, measured_on, remedy = "its latency table", cost_model.table.device, "hwsbs lut build"
    elif isinstance(cost_model, APBCpuCostModel):
        what, measured_on = "its binary_kernels block", cost_model.kernels.measured_on
        remedy = "hwsbs profiles measure-kernels"
    else:
        return
    why = measured_elsewhere(measured_on)
    if why is not None:
        warnings.warn(
            f"profile {profile.name!r}: {what} was {why}; its latencies may not hold here "
            f"(measure this machine with {remedy})",
            stacklevel=2,
        )


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def busy_reason(when: str, load: float | None = None, cores: int | None = None) -> str | None:
    """Why timings taken ``when`` (e.g. "while measuring") are stretched by other processes: the
    1-minute load average above the core count plus 0.5 (this process's threads included), else None.

    A call longer than a scheduler slice (a batch-32 whole model: tens of ms) is preempted on
    every sample, so its median grows with the CPU share other processes take, while short calls
    (single layers, batch 1) mostly run between preemptions: a table built on a quieter machine
    then predicts every configuration too fast by about the same factor (rank order kept).
    """
    load = load_average() if load is None else load
    cores = (os.cpu_count() or 1) if cores is None else cores
    if load is None or load <= cores + 0.5:
        return None
    return (
        f"the machine was busy {when} (1-minute load average {load:.2f} on {cores} cores): other processes "
        f"stretch calls longer than a scheduler slice (whole models at large batches) by the CPU share they "
        f"take, so these timings and a table measured quieter disagree by about that factor; measure when the "
        f"load average stays below the core count"
    )


def warn_if_busy(when: str) -> float | None:
    """One warning when :func:`busy_reason` finds the machine busy; the 1-minute load average."""
    load = load_average()
    why = busy_reason(when, load)
    if why is not None:
        warnings.warn(why, stacklevel=2)
    return load
