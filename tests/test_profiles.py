"""Hardware profiles: schema, loader errors, built-ins, precision fallback, lookup table files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cost_models import cost_model_for
from cost_models.precision import candidate_precisions, executed_precision, round_up
from hardware_profiles import (
    BUILTIN_DIR,
    HardwareProfile,
    builtin_profile_names,
    load_lookup_table,
    load_profile,
    resolve_lookup_table,
    save_lookup_table,
    validate_profile_data,
)
from hardware_profiles.lut_table import LookupTable, LutEntry
from hardware_profiles.schema import FLOAT_BITS, json_schema_text
from hwsbs.errors import CostModelError, ProfileError
from tests.helpers import minimal_profile

BUILTINS = ["a100", "h100", "t4", "x86-avx512", "bismo", "stripes", "loom", "bitfusion"]


def write_profile(tmp_path: Path, data: dict, name: str = "toy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_builtins_present():
    assert set(BUILTINS) <= set(builtin_profile_names())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profile_validates_and_builds_its_default_model(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.sources
    assert profile.source_path == BUILTIN_DIR / f"{name}.yaml"
    model = cost_model_for(profile)
    assert model.name == profile.cost_model.name


def test_builtin_loads_through_the_profiles_symlink():
    assert load_profile("profiles/a100.yaml").name == "a100"


def test_schema_json_is_current():
    committed = (BUILTIN_DIR / "schema.json").read_text(encoding="utf-8")
    assert committed == json_schema_text(), "regenerate with: hwsbs profiles schema -o hardware_profiles/schema.json"
    assert json.loads(committed)["additionalProperties"] is False


def test_float_bits_match_cost_models():
    assert FLOAT_BITS == FLOAT_BITS


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"kindd": "gpu"}, "kindd", "unknown field"),
        ({"clock_hz": "fast"}, "clock_hz", "valid number"),
        (
            {"memory": [{"name": "dram", "bandwidth_bytes_per_s": -1.0}]},
            "memory[0].bandwidth_bytes_per_s",
            "greater than 0",
        ),
        ({"precisions": [{"w_bits": 8, "a_bits": 8}]}, "precisions[0].ops_per_s", "required"),
        (
            {"cost_model": {"name": "roofline", "per_layer_overhead": 1e-6}},
            "cost_model.roofline.per_layer_overhead",
            "unknown field",
        ),
        ({"cost_model": {"name": "rooflin"}}, "cost_model.name", "unknown value 'rooflin'"),
        ({"kind": "tpu"}, "kind", "'gpu', 'cpu' or 'accelerator'"),
        ({"efficiency": {"compute": 1.5}}, "efficiency.compute", "less than or equal to 1"),
    ],
)
def test_invalid_profile_message_names_file_field_problem(tmp_path, change, field, problem):
    path = write_profile(tmp_path, minimal_profile(**change))
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}")
    assert problem in message


def test_duplicate_key_is_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("schema_version: 1\nname: a\nname: b\nkind: gpu\n", encoding="utf-8")
    with pytest.raises(ProfileError, match=r"dup\.yaml.*duplicate key 'name'"):
        load_profile(path)


def test_duplicate_precision_pair_is_rejected():
    data = minimal_profile(precisions=[{"w_bits": 8, "a_bits": 8, "ops_per_s": 1.0}] * 2)
    with pytest.raises(ProfileError, match="precisions\\[1\\]: 8/8 bits listed twice"):
        validate_profile_data(data, "x.yaml")


def test_array_bit_range_checked():
    data = minimal_profile(array={"d_m": 4, "min_bits": 8, "max_bits": 2})
    with pytest.raises(ProfileError, match="array: min_bits"):
        validate_profile_data(data, "x.yaml")


def profile(**overrides) -> HardwareProfile:
    return validate_profile_data(minimal_profile(**overrides), "test")


def test_executed_precision_fallback_rules():
    h100 = load_profile("h100")
    assert (executed_precision(h100, 4, 4).w_bits, executed_precision(h100, 4, 4).a_bits) == (8, 8)
    assert not executed_precision(h100, 4, 4).native
    assert executed_precision(h100, 8, 8).native
    a100 = load_profile("a100")
    assert (executed_precision(a100, 2, 2).w_bits, executed_precision(a100, 2, 2).a_bits) == (4, 4)
    assert (executed_precision(a100, 4, 8).w_bits, executed_precision(a100, 4, 8).a_bits) == (8, 8)
    fp = executed_precision(a100, FLOAT_BITS, FLOAT_BITS)
    assert (fp.w_bits, fp.number_format) == (16, "float")  # float runs on the FP16 tensor cores
    cpu = load_profile("x86-avx512")
    assert executed_precision(cpu, 32, 32).native
    assert executed_precision(cpu, 2, 2).w_bits == 8  # sub-8-bit runs as INT8
    assert executed_precision(cpu, 16, 16).w_bits == 32  # no 16-bit integer path: FP32


def test_executed_precision_on_bit_serial_arrays_clamps():
    fusion = load_profile("bitfusion")
    assert (executed_precision(fusion, 1, 3).w_bits, executed_precision(fusion, 1, 3).a_bits) == (2, 3)
    assert executed_precision(fusion, 32, 32).w_bits == 8
    assert executed_precision(load_profile("bismo"), 32, 32).w_bits == 16


def test_fallback_error_and_no_execution_path():
    strict = profile(fallback="error")
    with pytest.raises(CostModelError, match="4/4-bit layers are not executed"):
        executed_precision(strict, 4, 4)
    assert executed_precision(strict, 32, 32).w_bits == 8  # float still maps to the widest path
    with pytest.raises(CostModelError, match="precisions/array"):
        executed_precision(profile(precisions=[]), 8, 8)


def test_candidate_precisions_include_every_covering_path():
    a100 = load_profile("a100")
    assert {(c.w_bits, c.a_bits) for c in candidate_precisions(a100, 2, 2)} == {(4, 4), (8, 8), (16, 16)}
    assert {(c.w_bits, c.a_bits) for c in candidate_precisions(a100, 1, 1)} == {(1, 1), (4, 4), (8, 8), (16, 16)}


def test_round_up():
    assert [round_up(c, 16) for c in (1, 16, 17)] == [16, 16, 32]
    assert round_up(5, 1) == 5


def table_data() -> dict:
    return {
        "format": "hwsbs-lut/1",
        "device": "toy",
        "fallback": "next_wider",
        "entries": [
            {
                "signature": "linear_i8_o8_n1",
                "w_bits": 8,
                "a_bits": 8,
                "kept_in": 8,
                "kept_out": 8,
                "mean_s": 1e-5,
                "std_s": 1e-7,
            }
        ],
    }


def test_lookup_table_relative_path_resolves_next_to_profile(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "toy.yaml").write_text(yaml.safe_dump(table_data()), encoding="utf-8")
    path = write_profile(tmp_path, minimal_profile(lookup_table="tables/toy.yaml"))
    table, where = resolve_lookup_table(load_profile(path))
    assert where == str(tmp_path / "tables" / "toy.yaml")
    assert table.entries[0].mean_s == 1e-5


def test_lookup_table_inline_and_json(tmp_path):
    inline = profile(lookup_table=table_data())
    table, where = resolve_lookup_table(inline)
    assert "inline" in where and table.fallback == "next_wider"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table_data()), encoding="utf-8")
    assert load_lookup_table(path).entries[0].kept_out == 8


def test_lookup_table_errors_name_file_and_field(tmp_path):
    bad = table_data()
    bad["entries"][0]["mean_s"] = -1.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"bad\.yaml: entries\[0\]\.mean_s: input should be greater than 0"):
        load_lookup_table(path)
    dup = table_data()
    dup["entries"] = dup["entries"] * 2
    path.write_text(yaml.safe_dump(dup), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"entries\[1\] repeats entries\[0\]"):
        load_lookup_table(path)
    with pytest.raises(ProfileError, match="not found"):
        load_lookup_table(tmp_path / "missing.yaml")
    with pytest.raises(ProfileError, match="lookup_table: not set"):
        resolve_lookup_table(profile())


def test_lookup_table_round_trip(tmp_path):
    table = LookupTable(entries=[LutEntry(signature="s", w_bits=4, a_bits=4, kept_in=2, kept_out=3, mean_s=2e-6)])
    for name in ("t.yaml", "t.json"):
        save_lookup_table(table, tmp_path / name)
        assert load_lookup_table(tmp_path / name) == table
