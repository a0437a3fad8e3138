"""Measured latency tables (``hardware_profiles/tables/NAME.yaml``) used by the ``lut`` cost model.

A table is a flat list of measurements, one per (layer signature, w_bits, a_bits, kept_in,
kept_out, batch), so that a profiling tool can append rows as it measures them. Entries of one
signature and bit pair should form a grid over kept_in x kept_out (depthwise layers: a line over
kept_out) for the cost model to interpolate pruned layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from hardware_profiles.checked_io import TEXT_LIMIT, read_checked_json
from hardware_profiles.errors import ConfigError, ProfileError

from .cost_params import StrictModel
from .errors_format import format_validation_error
from .yaml_io import dump_yaml, load_yaml

__all__ = [
    "LUT_FORMAT",
    "LutEntry",
    "LutAPBEntry",
    "WholeModelTerm",
    "LookupTable",
    "load_lookup_table",
    "save_lookup_table",
]

#: Format tag written at the top of every table file.
LUT_FORMAT: Final = "hwsbs-lut/1"
#: Largest channel count or batch a table entry may name (2**24).
MAX_COUNT = 1 << 24


class LutEntry(StrictModel):
    """One measured layer latency."""

    model_config = ConfigDict(allow_inf_nan=False)  # inf and nan are no latencies

    signature: str = Field(min_length=1, description="LayerShape.signature of the measured layer.")
    w_bits: int = Field(ge=1, le=32, description="Weight bits the layer ran at (32 = float).")
    a_bits: int = Field(ge=1, le=32, description="Input-activation bits the layer ran at (32 = float).")
    kept_in: int = Field(gt=0, le=MAX_COUNT, description="Input channels the measured layer had.")
    kept_out: int = Field(gt=0, le=MAX_COUNT, description="Output channels the measured layer had.")
    batch: int = Field(default=1, gt=0, le=MAX_COUNT, description="Batch size of the measurement.")
    mean_s: float = Field(gt=0, description="Mean (or median) latency in seconds.")
    std_s: float = Field(default=0.0, ge=0, description="Spread of the latency (standard deviation) in seconds.")


class LutAPBEntry(StrictModel):
    """One measured APB layer latency (binary weights plus ``fp_share`` of them in full precision),
    timed as ``hwsbs export`` runs it (``hwsbs lut build --apb``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    signature: str = Field(min_length=1, description="LayerShape.signature of the measured layer.")
    a_bits: int = Field(ge=1, le=32, description="Input-activation bits the layer ran at (32 = float).")
    fp_share: float = Field(ge=0, lt=1, description="Share of the layer's weights kept in full precision.")
    kept_in: int = Field(gt=0, le=MAX_COUNT, description="Input channels the measured layer had.")
    kept_out: int = Field(gt=0, le=MAX_COUNT, description="Output channels the measured layer had.")
    batch: int = Field(default=1, gt=0, le=MAX_COUNT, description="Batch size of the measurement.")
    mean_s: float = Field(gt=0, description="Mean (or median) latency in seconds.")
    std_s: float = Field(default=0.0, ge=0, description="Spread of the latency (standard deviation) in seconds.")


class WholeModelTerm(StrictModel):
    """What the per-layer sum misses for one model at one batch: ``overhead_s + scale * sum``,
    fitted by least squares on whole-model measurements (``hwsbs lut build --whole-model-configs``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    model: str = Field(min_length=1, description="Model name the term was fitted on (e.g. resnet20).")
    batch: int = Field(default=1, gt=0, le=MAX_COUNT, description="Batch size of the measurements.")
    overhead_s: float = Field(description="Per-inference time not in any layer (seconds; may be negative).")
    scale: float = Field(gt=0, description="Factor on the sum of the layers' table latencies (glue, fusion).")
    configs: int = Field(default=0, ge=0, description="Whole-model configurations the term was fitted on.")


class LookupTable(StrictModel):
    """A device's measured layer latencies."""

    format: Literal["hwsbs-lut/1"] = Field(default=LUT_FORMAT, description="Table format and version.")
    device: str = Field(default="", description="What was measured (device, driver, library versions).")
    method: str = Field(default="", description="How it was measured (warm-up, repetitions, threads, statistic).")
    fallback: Literal["next_wider", "error"] = Field(
        default="error",
        description=(
            "A bit pair missing for a layer: next_wider uses the narrowest measured pair at least as wide "
            "in both operands (what a device without that precision does); error refuses."
        ),
    )
    entries: list[LutEntry] = Field(min_length=1, description="The measurements.")
    whole_model: list[WholeModelTerm] = Field(
        default_factory=list,
        description="Optional per-model terms turning a sum of layer latencies into a whole-model latency.",
    )
    apb: list[LutAPBEntry] = Field(
        default_factory=list,
        description="Optional APB layer latencies over the full-precision share (hwsbs lut build --apb).",
    )

    def whole_model_term(self, model: str, batch: int) -> WholeModelTerm | None:
        """The term fitted for ``model`` at ``batch`` (else at the nearest measured batch below), or None."""
        terms = sorted((t for t in self.whole_model if t.model == model), key=lambda t: t.batch)
        below = [t for t in terms if t.batch <= batch]
        return below[-1] if below else (terms[0] if terms else None)

    @model_validator(mode="after")
    def _unique_entries(self) -> LookupTable:
        seen: dict[tuple, int] = {}
        for i, e in enumerate(self.entries):
            key = (e.signature, e.w_bits, e.a_bits, e.kept_in, e.kept_out, e.batch)
            if key in seen:
                raise ValueError(
                    f"entries[{i}] repeats entries[{seen[key]}] ({e.signature} {e.w_bits}/{e.a_bits} bits)"
                )
            seen[key] = i
        apb_seen: dict[tuple, int] = {}
        for i, a in enumerate(self.apb):
            apb_key = (a.signature, a.a_bits, a.fp_share, a.kept_in, a.kept_out, a.batch)
            if apb_key in apb_seen:
                raise ValueError(f"apb[{i}] repeats apb[{apb_seen[apb_key]}] ({a.signature} at share {a.fp_share:g})")
            apb_seen[apb_key] = i
        return self


def _read_table_data(path: Path) -> Any:
    """The parsed table file: a regular file of at most TEXT_LIMIT bytes, JSON or YAML by suffix."""
    try:
        if path.suffix == ".json":
            return read_checked_json(path, "lookup table file", TEXT_LIMIT, ProfileError)
        return load_yaml(path, what="lookup table file", error=ProfileError)
    except ProfileError:
        raise
    except ConfigError as exc:  # a YAML syntax error
        raise ProfileError(str(exc)) from None


def load_lookup_table(path: str | Path) -> LookupTable:
    """Read and validate a table file (YAML, or JSON by ``.json`` suffix).

    Raises:
        ProfileError: ``FILE: field.path: problem`` for a missing, unparsable or invalid table.
    """
    p = Path(path)
    data = _read_table_data(p)
    if not isinstance(data, dict):
        raise ProfileError(f"{p}: a lookup table must be a mapping with 'format' and 'entries'")
    try:
        return LookupTable.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(format_validation_error(str(p), exc)) from None


def save_lookup_table(table: LookupTable, path: str | Path) -> None:
    """Write ``table`` as YAML (JSON for a ``.json`` path), atomically for YAML."""
    p = Path(path)
    data = table.model_dump(mode="json")
    if p.suffix == ".json":
        p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    else:
        dump_yaml(data, p)
