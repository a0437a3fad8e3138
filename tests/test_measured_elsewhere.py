"""A CPU lookup table measured on another CPU is used with a one-line warning."""

from __future__ import annotations

import subprocess
import warnings

import pytest

import hwsbs.lut.machine as machine
from hardware_profiles import BUILTIN_DIR
from hwsbs.objectives import resolve_cost_model
from tests.helpers import hwsbs_command

EPYC_2C = {"cpu": "AMD EPYC", "cpu_family": "25", "cpu_model": "1"}  # what the built-in epyc-2c table names
XEON = {"cpu": "Intel(R) Xeon(R) Platinum 8481C", "cpu_family": "6", "cpu_model": "143"}


def test_the_cpu_line_of_a_table_is_compared_with_this_machine():
    device = "AMD EPYC (family 25 model 1), 2 cores (avx2, fma; no VNNI), 1 thread, torch 2.13.0+cpu"
    assert machine.measured_elsewhere(device, EPYC_2C) is None
    why = machine.measured_elsewhere(device, XEON)
    assert why == (
        "measured on AMD EPYC (family 25 model 1), but this machine is Intel(R) Xeon(R) Platinum 8481C (family 6 model 143)"
    )
    assert machine.measured_elsewhere("NVIDIA H100 80GB HBM3 (CUDA 12.4), torch 2.13", XEON) is None  # not judged


@pytest.mark.parametrize(("here", "warns"), [(EPYC_2C, False), (XEON, True)])
def test_search_on_another_cpu_warns_once(monkeypatch, here, warns):
    monkeypatch.setattr(machine, "machine_info", lambda *a, **k: here)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        resolve_cost_model("epyc-2c")
        resolve_cost_model("a100")  # an analytic model: nothing to compare
    texts = [str(w.message) for w in got if "latency table" in str(w.message)]
    assert len(texts) == (1 if warns else 0)
    if warns:
        assert texts[0].startswith("profile 'epyc-2c': its latency table was measured on AMD EPYC (family 25 model 1)")


def test_the_cli_prints_the_warning_as_one_line(tmp_path):
    """A copy of epyc-2c whose table says it was measured on a CPU no machine has."""
    (tmp_path / "tables").mkdir()
    table = (BUILTIN_DIR / "tables" / "epyc-2c.yaml").read_text()
    old = next(line for line in table.splitlines() if line.startswith("device:"))
    (tmp_path / "tables" / "epyc-2c.yaml").write_text(
        table.replace(old, 'device: "Imaginary CPU (family 99 model 9), 2 cores"')
    )
    (tmp_path / "elsewhere.yaml").write_text(
        (BUILTIN_DIR / "epyc-2c.yaml").read_text().replace("name: epyc-2c", "name: elsewhere")
    )
    argv = ["search", "--hw", str(tmp_path / "elsewhere.yaml"), "--subset", "64", "--method", "uniform"]
    argv += ["--pretrain-epochs", "0", "--search-epochs", "0", "--finetune-epochs", "0", "--no-progress"]
    done = subprocess.run(
        hwsbs_command(*argv, "--out", str(tmp_path / "r")), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if "latency table" in ln or "warn(" in ln]
    assert lines == [
        "hwsbs search: warning: profile 'elsewhere': its latency table was measured on Imaginary CPU (family 99 "
        "model 9), but this machine is " + lines[0].split("but this machine is ", 1)[1]
    ]
