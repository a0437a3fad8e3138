"""Write a measured table (one flow-style row per entry, to stay small) and the profile using it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hardware_profiles import load_profile
from hardware_profiles.lut_table import LookupTable, load_lookup_table
from hardware_profiles.schema import ChannelSplit, HardwareProfile
from hwsbs.errors import ConfigError

__all__ = ["write_table", "write_profile", "profile_name_for"]


def _float(v: float) -> str:
    # Always a mantissa with a dot and a signed exponent: YAML 1.1 reads "1e-05" as a string.
    return f"{v:.4e}"


def write_table(table: LookupTable, path: str | Path, header: list[str] | None = None) -> Path:
    """Write ``table`` as YAML, one ``{...}`` row per entry; read back and validated."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {h}" for h in header or []]
    lines += [
        f"format: {table.format}",
        f"device: {json.dumps(table.device)}",
        f"method: {json.dumps(table.method)}",
        f"fallback: {table.fallback}",
        "entries:",
    ]
    for e in table.entries:
        lines.append(
            f"  - {{signature: {e.signature}, w_bits: {e.w_bits}, a_bits: {e.a_bits}, kept_in: {e.kept_in}, "
            f"kept_out: {e.kept_out}, batch: {e.batch}, mean_s: {_float(e.mean_s)}, std_s: {_float(e.std_s)}}}"
        )
    if table.whole_model:
        lines.append("whole_model:")
        for t in table.whole_model:
            lines.append(
                f"  - {{model: {json.dumps(t.model)}, batch: {t.batch}, overhead_s: {_float(t.overhead_s)}, "
                f"scale: {_float(t.scale)}, configs: {t.configs}}}"
            )
    if table.apb:
        lines.append("apb:")
        for a in table.apb:
            lines.append(
                f"  - {{signature: {a.signature}, a_bits: {a.a_bits}, fp_share: {_float(a.fp_share)}, "
                f"kept_in: {a.kept_in}, kept_out: {a.kept_out}, batch: {a.batch}, mean_s: {_float(a.mean_s)}, "
                f"std_s: {_float(a.std_s)}}}"
            )
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(p)
    load_lookup_table(p)  # raises ProfileError if what was written does not read back
    return p


def profile_name_for(path: str | Path) -> str:
    """A profile name from its file name (``hardware_profiles/epyc-2c.yaml`` -> ``epyc-2c``)."""
    stem = Path(path).stem
    if not stem or not (stem[0].isalnum() and all(c.isalnum() or c in "_.-" for c in stem)):
        raise ConfigError(f"--out {path}: the file name must be a profile name (letters, digits, _ . -)")
    return stem


def write_profile(
    path: str | Path,
    *,
    name: str,
    kind: str,
    description: str,
    table_path: str | Path,
    sources: list[str],
    header: list[str] | None = None,
    channel_split: ChannelSplit | None = None,
) -> HardwareProfile:
    """Write a profile whose default cost model is ``lut`` on ``table_path`` (with a measured
    ``channel_split`` block when given); loads it back."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table_ref = Path(table_path)
    try:
        rel = table_ref.resolve().relative_to(p.resolve().parent)
    except ValueError:
        rel = table_ref.resolve()
    data: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "description": description,
        "kind": kind,
        "cost_model": {"name": "lut", "outside_grid": "proportional"},
        "fallback": "next_wider",
        "lookup_table": rel.as_posix(),
    }
    if channel_split is not None:
        data["channel_split"] = channel_split.model_dump()
    data["sources"] = sources
    lines = [f"# {h}" for h in header or []]
    if (p.parent / "schema.json").is_file():
        lines.insert(0, "# yaml-language-server: $schema=schema.json")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False, width=1000)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return load_profile(p)
