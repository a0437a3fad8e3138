"""Hardware profile schema (pydantic v2): what a device executes, how fast, and how to cost it.

Units are in field names (``_hz``, ``_bytes_per_s``, ``_bytes``, ``_pj``, ``_s``). Every class
forbids unknown keys, so a misspelled field is an error rather than a silently ignored default,
and every number must be finite: ``.inf``, ``.nan`` and literals such as ``1.0e400`` (which
parse as infinity) are refused with the field named.
The JSON Schema exported from here is committed as ``hardware_profiles/schema.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, PositiveFloat, PositiveInt, PrivateAttr, Tag, model_validator

from . import cost_params
from .cost_params import *  # noqa: F403  (the cost_model: block's classes, re-exported below)
from .cost_params import CostModelParams, Fraction, StrictModel
from .lut_table import LookupTable

__all__ = [
    "SCHEMA_VERSION",
    "FLOAT_BITS",
    "PrecisionEntry",
    "MemoryLevel",
    "BufferSpec",
    "Efficiency",
    "ArraySpec",
    "EnergyFigures",
    "ChannelSplit",
    "KernelSpeed",
    "BinaryGemmSpeed",
    "SparseGemmSpeed",
    "BinaryKernels",
    "HardwareProfile",
    "profile_json_schema",
    "json_schema_text",
    "write_json_schema",
]
__all__ += cost_params.__all__  # the whole profile schema from one module, cost_model: block included

SCHEMA_VERSION = 1

#: Bits that stand for float (equals ``cost_models.base.FLOAT_BITS``; not imported from
#: there because cost_models imports this module).
FLOAT_BITS = 32

Bits = Annotated[int, Field(ge=1, le=FLOAT_BITS)]


class _FiniteModel(StrictModel):
    """A profile class whose float fields refuse infinity and NaN (merged with StrictModel's config)."""

    model_config = ConfigDict(allow_inf_nan=False)


class PrecisionEntry(_FiniteModel):
    """A (w_bits, a_bits) pair the device executes natively, and how fast."""

    w_bits: Bits = Field(description="Weight bits of this execution path (32 = FP32).")
    a_bits: Bits = Field(description="Activation bits of this execution path (32 = FP32).")
    ops_per_s: PositiveFloat = Field(
        description="Peak dense throughput in operations per second; one multiply-accumulate = 2 operations, as datasheets count."
    )
    number_format: Literal["int", "float"] = Field(
        default="int", description="int: fixed point; float: a floating-point path (FP16, BF16, FP32)."
    )
    label: str = Field(default="", description="What the path is called, e.g. 'INT8 tensor core'.")
    channel_tile: PositiveInt | None = Field(
        default=None,
        description="Channel counts are rounded up to a multiple of this on this path; null uses the profile's channel_tile.",
    )


class MemoryLevel(_FiniteModel):
    """One memory the device reads layers' operands from."""

    name: str = Field(min_length=1, description="Short name, e.g. 'hbm3' or 'dram'.")
    bandwidth_bytes_per_s: PositiveFloat = Field(description="Peak bandwidth in bytes per second.")
    size_bytes: PositiveInt | None = Field(default=None, description="Capacity in bytes (informational).")


class BufferSpec(_FiniteModel):
    """An on-chip buffer of an accelerator (sizes bound how a layer is tiled)."""

    name: str = Field(min_length=1, description="What the buffer holds, e.g. 'weights'.")
    size_bytes: PositiveInt = Field(description="Capacity in bytes.")


class Efficiency(_FiniteModel):
    """Achievable fractions of the peaks (1.0 = the datasheet peak, an upper bound)."""

    compute: Fraction = Field(default=1.0, description="Achieved / peak arithmetic throughput.")
    memory: Fraction = Field(default=1.0, description="Achieved / peak memory bandwidth.")


class ArraySpec(_FiniteModel):
    """A bit-serial or bit-fusion accelerator's compute array (each model reads the fields it needs)."""

    d_m: PositiveInt | None = Field(
        default=None, description="Output channels in parallel (BISMO D_m; Bit Fusion M, the array's columns)."
    )
    d_k: PositiveInt | None = Field(
        default=None, description="Reduction terms in parallel (BISMO D_k; Bit Fusion N, the array's rows)."
    )
    d_n: PositiveInt | None = Field(default=None, description="Output positions in parallel (BISMO D_n).")
    equivalent_macs_per_cycle: PositiveInt | None = Field(
        default=None,
        description="Stripes/Loom: bit-parallel MACs per cycle at baseline_bits the array matches in peak throughput.",
    )
    baseline_bits: Bits = Field(default=16, description="Precision of that bit-parallel equivalent (Stripes/Loom: 16).")
    min_bits: Bits = Field(
        default=1, description="Narrowest precision; narrower operands run at this (Bit Fusion: 2-bit bricks)."
    )
    max_bits: Bits = Field(
        default=16, description="Widest precision; wider operands, float included, run at this (fixed point)."
    )

    @model_validator(mode="after")
    def _bits_order(self) -> ArraySpec:
        if self.min_bits > self.max_bits:
            raise ValueError(f"min_bits ({self.min_bits}) must not exceed max_bits ({self.max_bits})")
        return self


class EnergyFigures(_FiniteModel):
    """Energy per operation and per 64-bit access, in picojoules (e.g. Horowitz, ISSCC 2014, 45 nm)."""

    int8_add_pj: PositiveFloat = Field(description="8-bit integer add.")
    int8_mult_pj: PositiveFloat = Field(description="8-bit x 8-bit integer multiply.")
    int32_add_pj: PositiveFloat = Field(description="32-bit integer add.")
    int32_mult_pj: PositiveFloat = Field(description="32-bit integer multiply.")
    fp16_add_pj: PositiveFloat = Field(description="16-bit float add.")
    fp16_mult_pj: PositiveFloat = Field(description="16-bit float multiply.")
    fp32_add_pj: PositiveFloat = Field(description="32-bit float add.")
    fp32_mult_pj: PositiveFloat = Field(description="32-bit float multiply.")
    sram_read_64b_pj: PositiveFloat = Field(description="64-bit read from the on-chip SRAM buffers.")
    dram_read_64b_pj: PositiveFloat = Field(description="64-bit read from DRAM.")


class ChannelSplit(_FiniteModel):
    """Whether the device runs a layer with channel-wise bit widths as one sub-GEMM per width.

    Without this block (or with ``supported: false``) a layer whose output-channel groups have
    different weight widths runs at its widest group (one kernel, one precision), as GPUs and CPUs
    do; with it, the roofline, energy and lut models price it as one sub-layer per width (each
    reading the whole input), summed, plus ``per_split_overhead_s`` per sub-layer beyond the first.
    """

    supported: bool = Field(description="True if a layer may run as one sub-GEMM per weight bit width.")
    per_split_overhead_s: float = Field(
        default=0.0, ge=0.0, description="Seconds each extra sub-GEMM costs (a kernel launch, a concat)."
    )


class KernelSpeed(_FiniteModel):
    """One kernel's time per call: ``per_call_s + work / macs_per_s``."""

    per_call_s: float = Field(ge=0.0, description="Fixed seconds per call (dispatch, allocation, layout).")
    macs_per_s: PositiveFloat = Field(description="Multiply-adds per second once running.")


class BinaryGemmSpeed(_FiniteModel):
    """APB's bitwise GEMM: ``per_call_s + word_ops / word_ops_per_s + packed_bits / packed_bits_per_s``."""

    per_call_s: float = Field(ge=0.0, description="Fixed seconds per call (transposes, allocation, dispatch).")
    word_ops_per_s: PositiveFloat = Field(
        description="64-bit AND + POPCNT + accumulate per second: M x N x ceil(K/64) x a_bits per call."
    )
    packed_bits_per_s: PositiveFloat = Field(
        description="Activation bits packed into bit planes per second: M x K x a_bits per call."
    )


class SparseGemmSpeed(_FiniteModel):
    """APB's CSR outliers: ``per_call_s + outlier_macs / macs_per_s + activations / activations_per_s``."""

    per_call_s: float = Field(ge=0.0, description="Fixed seconds per call (allocation, dispatch).")
    macs_per_s: PositiveFloat = Field(description="Outlier multiply-adds per second: M x outliers per call.")
    activations_per_s: PositiveFloat = Field(
        description="Activations laid out for the kernel per second (a transpose): M x K per call."
    )


class BinaryKernels(_FiniteModel):
    """Measured single-core speeds of APB's kernels on one CPU, for the ``apb_cpu`` cost model.

    Written by ``hwsbs profiles measure-kernels`` (least-squares fit of a per-call term and
    rates, in relative error, to kernel timings over a grid of GEMM shapes).
    """

    measured_on: str = Field(min_length=1, description="The CPU as hwsbs describes it; a search on another CPU warns.")
    threads: PositiveInt = Field(default=1, description="Threads the kernels ran on.")
    binary_gemm: BinaryGemmSpeed = Field(description="Bit-packed binary GEMM (numba AND + popcount).")
    sparse_gemm: SparseGemmSpeed = Field(description="CSR outliers times the dense activations.")
    int8_gemm: KernelSpeed = Field(description="Dense int8 GEMM (torch._int_mm / oneDNN) for integer layers.")
    fp32_gemm: KernelSpeed = Field(description="Dense FP32 GEMM (torch.matmul) for float layers.")
    fit: str = Field(default="", description="How well the fit matched its measurements, in words.")


def _table_tag(value: Any) -> str:
    return "path" if isinstance(value, str) else "inline"


# A table file path (relative to the profile file) or the table itself.
LookupTableRef = Annotated[
    Annotated[str, Tag("path")] | Annotated[LookupTable, Tag("inline")], Discriminator(_table_tag)
]


class HardwareProfile(_FiniteModel):
    """What a device is, which precisions it executes at what speed, and how to cost a layer on it."""

    schema_version: Literal[1] = Field(description="Profile schema version; bump on breaking changes.")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Short name used with --hw.")
    description: str = Field(default="", description="One line on the device.")
    kind: Literal["gpu", "cpu", "accelerator"] = Field(description="Device class.")
    cost_model: CostModelParams = Field(description="Default cost model and its parameters (override with --cost).")
    clock_hz: PositiveFloat | None = Field(default=None, description="Clock of the compute array, in hertz.")
    precisions: list[PrecisionEntry] = Field(
        default_factory=list, description="(w_bits, a_bits) pairs the device executes natively, with their throughput."
    )
    fallback: Literal["next_wider", "error"] = Field(
        default="next_wider",
        description=(
            "A pair not in precisions: next_wider runs it on the narrowest executed pair at least as wide in "
            "both operands; error refuses. Float (32 bits) always runs on a 32/32 entry, else the widest float one."
        ),
    )
    channel_tile: PositiveInt = Field(
        default=1, description="Channel counts are rounded up to a multiple of this (1 = no rounding)."
    )
    memory: list[MemoryLevel] = Field(
        default_factory=list, description="Memories feeding the layers; the first is the default for the roofline."
    )
    buffers: list[BufferSpec] = Field(
        default_factory=list, description="On-chip buffers of an accelerator (informational for the built-in models)."
    )
    array: ArraySpec | None = Field(
        default=None, description="Compute array of a bit-serial or bit-fusion accelerator."
    )
    energy: EnergyFigures | None = Field(default=None, description="Energy per operation and per access.")
    efficiency: Efficiency = Field(default_factory=Efficiency, description="Achievable fractions of the peaks.")
    lookup_table: LookupTableRef | None = Field(
        default=None, description="Measured latencies: a table file path relative to this profile, or the table inline."
    )
    channel_split: ChannelSplit | None = Field(
        default=None,
        description="Split execution of channel-wise bit widths (absent: a mixed layer runs at its widest group).",
    )
    binary_kernels: BinaryKernels | None = Field(
        default=None, description="Measured APB kernel speeds on this CPU (the apb_cpu cost model needs them)."
    )
    extensions: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings for plugin cost models, keyed by the plugin's cost model name (not validated by hwsbs).",
    )
    sources: list[str] = Field(
        min_length=1, description="Where the figures come from (datasheets, papers, measurements)."
    )

    # The file the profile was loaded from; relative table paths resolve against it.
    _source_path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _unique_keys(self) -> HardwareProfile:
        pairs = [(p.w_bits, p.a_bits) for p in self.precisions]
        for i, pair in enumerate(pairs):
            if pair in pairs[:i]:
                raise ValueError(f"precisions[{i}]: {pair[0]}/{pair[1]} bits listed twice")
        names = [m.name for m in self.memory]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"memory[{i}]: name {n!r} listed twice")
        return self

    @property
    def source_path(self) -> Path | None:
        """The file this profile was loaded from (None when built in code)."""
        return self._source_path

    def with_source(self, path: str | Path | None) -> HardwareProfile:
        """Record the file this profile came from (the loader calls this); returns self."""
        self._source_path = None if path is None else Path(path)
        return self


def profile_json_schema() -> dict[str, Any]:
    """The JSON Schema of a hardware profile file (what ``hwsbs profiles schema`` prints)."""
    schema = HardwareProfile.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def json_schema_text() -> str:
    """The schema as the exact text committed in ``hardware_profiles/schema.json``."""
    return json.dumps(profile_json_schema(), indent=2, sort_keys=False) + "\n"


def write_json_schema(path: str | Path) -> None:
    """Write the profile JSON Schema to ``path`` (regenerates ``hardware_profiles/schema.json``)."""
    Path(path).write_text(json_schema_text(), encoding="utf-8")
