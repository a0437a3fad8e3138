"""Whole-model terms at batch 32, and measuring on a busy machine.

The batch-32 term is fitted and applied at batch 32 (a uniform 1.3x between the whole model and
the layers' sum is what it corrects). What it cannot correct is load that differs between
``lut build`` and ``lut check``: other processes stretch long calls (batch-32 whole models) by the
CPU share they take, so ``lut build``/``lut check`` warn on a busy machine and ``lut check``
records the load average it measured under.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from cost_models import cost_model_for
from hardware_profiles import load_profile, resolve_lookup_table
from hardware_profiles.lut_table import WholeModelTerm
from hwsbs.cli.main import main
from hwsbs.export import default_spec
from hwsbs.lut.fidelity import Measured, draw_configs, fit_profile
from hwsbs.lut.machine import busy_reason
from hwsbs.lut.profile_io import write_table
from hwsbs.lut.whole_model import fit_term

ROOT = Path(__file__).resolve().parents[1]


def test_batch32_term_is_fitted_and_applied_at_batch32(tmp_path):
    table = resolve_lookup_table(load_profile("epyc-2c"))[0]  # measured at batch 1 and 32
    spec = default_spec("small_cnn")
    configs = draw_configs(spec, 14, 1000, batch=32)
    fit_configs, checked = configs[:6], configs[6:]  # the fit's and other configurations (lut check's)
    used = {d.shape.signature for d in configs[0].layers}
    small = table.model_copy(update={"entries": [e for e in table.entries if e.signature in used]})
    (tmp_path / "tables").mkdir()
    write_table(small, tmp_path / "tables" / "epyc-2c.yaml")
    shutil.copy(ROOT / "hardware_profiles" / "epyc-2c.yaml", tmp_path / "epyc-2c.yaml")
    hw = str(tmp_path / "epyc-2c.yaml")
    model = cost_model_for(load_profile(hw))

    def whole(s: float) -> float:  # a whole model 1.3x its layers' sum plus 2 ms
        return 2e-3 + 1.3 * s

    sums = [c.cost(model) for c in fit_configs]
    term32 = fit_term("small_cnn", 32, sums, [whole(s) for s in sums])
    assert term32.scale == pytest.approx(1.3) and term32.overhead_s == pytest.approx(2e-3, abs=1e-9)
    term1 = WholeModelTerm(model="small_cnn", batch=1, overhead_s=0.0, scale=1.0, configs=6)
    write_table(small.model_copy(update={"whole_model": [term1, term32]}), tmp_path / "tables" / "epyc-2c.yaml")

    measured = [Measured(i, c, whole(c.cost(model)), 0.0, 0, 1.0, 8.0) for i, c in enumerate(checked)]
    fit = fit_profile(hw, measured, 32)
    assert fit.summary["within_10pct"] == 1.0 and fit.summary["mape"] < 1e-9
    assert fit.layers_only is not None and fit.layers_only["within_10pct"] == 0.0  # the term did the work
    at1 = fit_profile(hw, [Measured(0, checked[0], 1e-3, 0.0, 0, 1.0, 8.0)], 1)
    assert at1.layers_only is None  # batch 1 applies its own (identity) term, not batch 32's


@pytest.mark.parametrize("load,cores,busy", [(1.0, 2, False), (2.5, 2, False), (2.6, 2, True), (17.0, 16, True)])
def test_busy_reason(load, cores, busy):
    why = busy_reason("while measuring", load=load, cores=cores)
    assert (why is not None) == busy
    assert why is None or f"busy while measuring (1-minute load average {load:.2f} on {cores} cores)" in why


CHECK = ["lut", "check", "--hw", "x86-avx512", "--configs", "3", "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize("load,warned", [(99.0, True), (0.0, False)])
def test_lut_check_warns_on_a_busy_machine_and_records_the_load(load, warned, monkeypatch, capsys):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert main([*CHECK, "--threads", "1", "--no-progress", "--json"]) == 0
    busy = [str(w.message) for w in record if "machine was busy" in str(w.message)]
    heads = [b.split(" (")[0] for b in busy]
    assert heads == (
        ["the machine was busy before measuring", "the machine was busy while measuring"] if warned else []
    )
    assert all("1-minute load average 99.00 on" in b for b in busy)
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["load_average"] == [load, load]
