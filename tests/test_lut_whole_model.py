"""Whole-model terms in a lookup table: fitted at ``lut build``, applied by ``lut check``, and
tables without them (every table written before) still load."""

from __future__ import annotations

import json

import pytest

from hardware_profiles import load_profile, resolve_lookup_table
from hardware_profiles.lut_table import LookupTable, LutEntry, WholeModelTerm, load_lookup_table
from hwsbs.cli.main import main
from hwsbs.lut.profile_io import write_table
from hwsbs.lut.whole_model import apply_term, fit_term, predict_whole

ENTRY = LutEntry(signature="conv:1x1", w_bits=8, a_bits=8, kept_in=4, kept_out=4, mean_s=1e-5)


def test_fit_recovers_overhead_and_scale():
    sums = [1e-3, 2e-3, 3e-3, 4e-3]
    term = fit_term("resnet20", 32, sums, [2e-4 + 1.5 * s for s in sums])
    assert term.overhead_s == pytest.approx(2e-4, rel=1e-6) and term.scale == pytest.approx(1.5)
    assert term.configs == 4 and apply_term(term, 2e-3) == pytest.approx(3.2e-3)
    flat = fit_term("m", 1, [1e-3, 1e-3], [1.2e-3, 1.4e-3])  # no spread: overhead only
    assert flat.scale == 1.0 and flat.overhead_s == pytest.approx(3e-4)
    assert apply_term(None, 5e-3) == 5e-3


def test_table_round_trip_and_old_tables_load(tmp_path):
    old = tmp_path / "old.yaml"
    write_table(LookupTable(entries=[ENTRY]), old)
    assert "whole_model" not in old.read_text() and load_lookup_table(old).whole_model == []
    new = tmp_path / "new.yaml"
    terms = [WholeModelTerm(model="resnet20", batch=b, overhead_s=1e-4 * b, scale=1.2, configs=6) for b in (1, 32)]
    write_table(LookupTable(entries=[ENTRY], whole_model=terms), new)
    table = load_lookup_table(new)
    assert table.whole_model == terms
    assert table.whole_model_term("resnet20", 16).batch == 1 and table.whole_model_term("resnet20", 64).batch == 32
    assert table.whole_model_term("small_cnn", 1) is None
    assert predict_whole(table, "resnet20", 32, 1e-2) == pytest.approx(3.2e-3 + 1.2e-2)


def test_bad_term_is_a_one_line_profile_error(tmp_path):
    from hardware_profiles.errors import ProfileError

    p = tmp_path / "bad.yaml"
    write_table(LookupTable(entries=[ENTRY]), p)
    p.write_text(p.read_text() + "whole_model:\n  - {model: m, batch: 1, overhead_s: 1.0e-4, scale: -1.0}\n")
    with pytest.raises(ProfileError, match="scale"):
        load_lookup_table(p)


@pytest.mark.slow
def test_build_fits_terms_and_check_applies_them(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    tiny = ["--repeats", "4", "--warmup", "1", "--threads", "1", "--no-progress", "--runtime", "onnxruntime"]
    out = tmp_path / "ort.yaml"
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(out), "--grid", "2", "--rounds", "1"]
    assert main([*argv, "--whole-model-configs", "3", *tiny]) == 0
    table = resolve_lookup_table(load_profile(out))[0]
    (term,) = table.whole_model
    assert term.model == "small_cnn" and term.batch == 1 and term.configs == 3
    assert "--whole-model-configs 3" in out.read_text()
    capsys.readouterr()
    assert main(["lut", "check", "--hw", str(out), "--configs", "3", "--json", *tiny]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "layers_only" in report["profiles"][0] and report["profiles"][0]["n"] == 3


def test_whole_model_configs_of_one_is_one_line(tmp_path, capsys):
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(tmp_path / "x.yaml"), "--whole-model-configs", "1"]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
