"""Parameters of each built-in cost model, as a profile's ``cost_model:`` block.

One class per model, each holding only that model's knobs; ``name`` discriminates the union. A
model used through ``--cost NAME`` on a profile whose default is another model gets the class's
defaults, and reads everything else from the profile's device fields.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "StrictModel",
    "BopsParams",
    "SizeParams",
    "RooflineParams",
    "BitSerialParams",
    "EnergyParams",
    "LutParams",
    "CostModelParams",
    "BUILTIN_COST_MODEL_NAMES",
]


class StrictModel(BaseModel):
    """Base of every profile class: unknown keys are errors (catches misspelled fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Ratios of achieved to peak performance: above 0, at most 1.
Fraction = Annotated[float, Field(gt=0, le=1)]


class BopsParams(StrictModel):
    """Bit operations (the SBS paper's metric) need no parameters."""

    name: Literal["bops"] = Field(default="bops", description="Cost model: MACs x w_bits x a_bits.")


class SizeParams(StrictModel):
    """Weight storage needs no parameters."""

    name: Literal["size"] = Field(default="size", description="Cost model: weight storage in bits.")


class RooflineParams(StrictModel):
    """Latency = max(compute time, memory time) + a fixed per-layer overhead."""

    name: Literal["roofline"] = Field(default="roofline", description="Cost model: roofline latency in seconds.")
    per_layer_overhead_s: float = Field(
        default=0.0, ge=0, description="Fixed time added to every layer (kernel launch, synchronisation), in seconds."
    )
    compute_efficiency: Fraction | None = Field(
        default=None, description="Achieved/peak compute for this model; null uses the profile's efficiency.compute."
    )
    memory_efficiency: Fraction | None = Field(
        default=None, description="Achieved/peak bandwidth for this model; null uses the profile's efficiency.memory."
    )
    memory_level: str | None = Field(
        default=None,
        description="Name of the memory level that feeds layers; null uses the first one listed under memory.",
    )
    operands_at_executed_precision: bool = Field(
        default=True,
        description=(
            "True: weights and activations move in the executed format (a 4-bit layer run at INT8 moves "
            "8-bit data). False: they move packed at the requested bits and are widened on chip."
        ),
    )
    weight_only_kernels: bool = Field(
        default=False,
        description=(
            "True: the device runs weight-only kernels (GPTQ/AWQ/Marlin-style): a weight-only layer's weights "
            "move packed at their bits plus FP16 group scales and are widened to the float path on chip, so "
            "memory-bound steps get cheaper with fewer weight bits. False: weight-only layers run as float ones."
        ),
    )


class BitSerialParams(StrictModel):
    """Cycle models of bit-serial and bit-fusion accelerators: latency = cycles / clock_hz."""

    name: Literal["bit_serial"] = Field(default="bit_serial", description="Cost model: bit-serial cycle latency.")
    variant: Literal["stripes", "loom", "bismo", "bitfusion"] = Field(
        default="bismo",
        description=(
            "stripes: time ~ a_bits; loom: conv ~ a_bits x w_bits, linear ~ w_bits; bismo: w x a x tiled "
            "D_m/D_k/D_n loops; bitfusion: 2-bit bricks fused per the Bit Fusion simulator."
        ),
    )
    per_layer_overhead_s: float = Field(
        default=0.0, ge=0, description="Fixed time added to every layer (configuration, draining), in seconds."
    )


class EnergyParams(StrictModel):
    """Energy = arithmetic energy per MAC + energy of the memory accesses, in joules."""

    name: Literal["energy"] = Field(default="energy", description="Cost model: energy in joules.")
    weights_from: Literal["dram", "sram"] = Field(
        default="dram", description="Memory weights are read from once per layer call."
    )
    activations_from: Literal["dram", "sram"] = Field(
        default="sram", description="Memory input activations are read from and outputs written to."
    )


class LutParams(StrictModel):
    """Measured latency table (the profile's lookup_table), interpolated over kept channels."""

    name: Literal["lut"] = Field(default="lut", description="Cost model: measured latency lookup table.")
    outside_grid: Literal["proportional", "clamp"] = Field(
        default="proportional",
        description=(
            "Kept channel counts outside the measured grid: proportional scales the nearest measured "
            "point by the MAC ratio; clamp uses the nearest measured point as is (conservative)."
        ),
    )


CostModelParams = Annotated[
    BopsParams | SizeParams | RooflineParams | BitSerialParams | EnergyParams | LutParams, Field(discriminator="name")
]

#: Cost model names a profile's ``cost_model.name`` may take (plugins are chosen with --cost).
BUILTIN_COST_MODEL_NAMES: tuple[str, ...] = ("bops", "size", "roofline", "bit_serial", "energy", "lut")
