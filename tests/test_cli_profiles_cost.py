"""``hwsbs profiles ...`` and ``hwsbs cost``: output, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from cost_models import LayerShape, build_cost_model
from hardware_profiles import BUILTIN_DIR, builtin_profile_names, load_profile
from hardware_profiles.schema import json_schema_text
from hwsbs.cli.main import main
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config, save_config
from tests.helpers import hwsbs_command, minimal_profile

GOOD = minimal_profile()

# (name, YAML text, field the error must name, words of the problem)
BAD_PROFILES = [
    ("misspelled", yaml.safe_dump({**GOOD, "precisons": GOOD["precisions"]}), "precisons", "unknown field"),
    ("duplicate", "schema_version: 1\nname: toy\nkind: gpu\nkind: cpu\n", "kind", "duplicate key"),
    ("wrongtype", yaml.safe_dump({**GOOD, "clock_hz": "fast"}), "clock_hz", "valid number"),
    (
        "negative",
        yaml.safe_dump({**GOOD, "memory": [{"name": "dram", "bandwidth_bytes_per_s": -1.0e9}]}),
        "memory[0].bandwidth_bytes_per_s",
        "greater than 0",
    ),
]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_profiles_list(capsys):
    code, out, _ = run(capsys, "profiles", "list")
    assert code == 0
    for name in builtin_profile_names():
        assert name in out
    assert "bit_serial" in out and "latency (s)" in out
    code, out, _ = run(capsys, "profiles", "list", "--json")
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(builtin_profile_names())


def test_profiles_show(capsys):
    code, out, _ = run(capsys, "profiles", "show", "h100")
    assert code == 0 and "roofline" in out and "INT8 tensor core" in out and "3350 GB/s" in out
    code, out, _ = run(capsys, "profiles", "show", "bitfusion", "--yaml")
    assert out == (BUILTIN_DIR / "bitfusion.yaml").read_text(encoding="utf-8")
    code, out, _ = run(capsys, "profiles", "show", "bismo", "--json")
    assert json.loads(out)["array"] == {
        "d_m": 8,
        "d_k": 256,
        "d_n": 8,
        "baseline_bits": 16,
        "min_bits": 1,
        "max_bits": 16,
    }
    code, _, err = run(capsys, "profiles", "show", "nosuch")
    assert code == 2 and "unknown hardware profile 'nosuch'" in err


def test_profiles_validate_builtins(capsys):
    files = [str(BUILTIN_DIR / f"{n}.yaml") for n in builtin_profile_names()]
    code, out, err = run(capsys, "profiles", "validate", *files)
    assert code == 0 and err == ""
    assert len(out.splitlines()) == len(files)
    assert all(line.startswith("ok ") for line in out.splitlines())


@pytest.mark.parametrize(("name", "text", "field", "problem"), BAD_PROFILES, ids=[b[0] for b in BAD_PROFILES])
def test_profiles_validate_bad_file_one_line(tmp_path, capsys, name, text, field, problem):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    code, out, err = run(capsys, "profiles", "validate", str(good), str(path))
    assert code == 2
    assert out.splitlines() == [f"ok {good} (toy: gpu, roofline in s)"]
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{path}: ")
    assert field in lines[0] and problem in lines[0]


def test_profiles_validate_subprocess(tmp_path):
    name, text, field, problem = BAD_PROFILES[3]
    path = tmp_path / "neg.yaml"
    path.write_text(text, encoding="utf-8")
    proc = subprocess.run(hwsbs_command("profiles", "validate", str(path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"{path}: {field}: input should be greater than 0, got -1000000000.0"]


def test_profiles_validate_semantic_problems(tmp_path, capsys):
    no_array = tmp_path / "noarray.yaml"
    no_array.write_text(yaml.safe_dump({**GOOD, "cost_model": {"name": "bit_serial"}}), encoding="utf-8")
    missing_table = tmp_path / "notable.yaml"
    missing_table.write_text(yaml.safe_dump({**GOOD, "lookup_table": "tables/none.yaml"}), encoding="utf-8")
    code, out, err = run(capsys, "profiles", "validate", str(no_array), str(missing_table))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{no_array}: ") and "array" in lines[0]
    assert lines[1].startswith(f"{missing_table}: ") and "none.yaml" in lines[1] and "not found" in lines[1]


def test_profiles_schema(capsys, tmp_path):
    code, out, _ = run(capsys, "profiles", "schema")
    assert code == 0 and out == json_schema_text()
    target = tmp_path / "schema.json"
    run(capsys, "profiles", "schema", "-o", str(target))
    assert target.read_text(encoding="utf-8") == (BUILTIN_DIR / "schema.json").read_text(encoding="utf-8")


def make_config(tmp_path: Path) -> Path:
    stem = LayerShape("stem", "conv", 3, 32, (3, 3), (1, 1), 1, (32, 32), (32, 32))
    body = LayerShape("body", "conv", 32, 64, (3, 3), (2, 2), 1, (32, 32), (16, 16))
    dw = LayerShape("dw", "conv", 64, 64, (3, 3), (1, 1), 64, (16, 16), (16, 16))
    head = LayerShape("head", "linear", 64, 10)
    config = CompressionConfig(
        layers=[
            LayerDecision(stem, 8, 8),
            LayerDecision(body, 2, 4, pruned_channels=list(range(16))),
            LayerDecision(dw, 4, 2, pruned_channels=list(range(8)), kept_in=48),
            LayerDecision(head, 8, 8),
        ],
        model="toy",
        batch=2,
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    return path


def test_cost_matches_config_cost(tmp_path, capsys):
    path = make_config(tmp_path)
    config = load_config(path)
    hws = ["a100", "h100", "bismo", "stripes", "loom", "bitfusion", "t4", "x86-avx512"]
    argv = ["cost", "--config", str(path), "--layers", "--json"]
    for hw in hws:
        argv += ["--hw", hw]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    doc = json.loads(out)
    assert doc["batch"] == 2 and [r["profile"] for r in doc["results"]] == hws
    for r in doc["results"]:
        profile = load_profile(r["hw"])
        model = build_cost_model(profile.cost_model.name, profile)
        assert r["cost"] == config.cost(model)
        assert r["uniform8"] == config.uniform(8).cost(model)
        assert r["full_precision"] == config.full_precision().cost(model)
        assert r["full_precision_over_cost"] == pytest.approx(r["full_precision"] / r["cost"])
        assert [row["cost"] for row in r["layers"]] == config.layer_costs(model)
        assert sum(row["share"] for row in r["layers"]) == pytest.approx(1.0)


def test_cost_override_and_tables(tmp_path, capsys):
    path = make_config(tmp_path)
    config = load_config(path)
    code, out, _ = run(
        capsys, "cost", "--config", str(path), "--hw", "a100", "--cost", "bops", "--json", "--batch", "1"
    )
    assert code == 0
    result = json.loads(out)["results"][0]
    config.batch = 1
    assert result["cost_model"] == "bops" and result["unit"] == "BOPs"
    assert result["cost"] == config.cost(build_cost_model("bops"))
    code, out, _ = run(capsys, "cost", "--config", str(path), "--hw", "a100", "--hw", "profiles/bismo.yaml", "--layers")
    assert code == 0
    assert "a100" in out and "bismo" in out and "per layer" in out and "head" in out


def test_cost_errors_are_one_line(tmp_path, capsys):
    path = make_config(tmp_path)
    code, _, err = run(capsys, "cost", "--config", str(path), "--hw", "h100", "--cost", "bit_serial")
    assert code == 2 and len(err.splitlines()) == 1 and "array" in err
    code, _, err = run(capsys, "cost", "--config", str(tmp_path / "missing.yaml"), "--hw", "a100")
    assert code == 2 and "missing.yaml" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "cost", "--config", str(path), "--hw", "nosuch")
    assert code == 2 and "unknown hardware profile" in err
