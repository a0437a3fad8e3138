"""APB layers in measured tables: ``lut build --apb``, the table's ``apb`` section, lut pricing."""

from __future__ import annotations

import json

import pytest
import torch

from cost_models import cost_model_for
from cost_models.base import LayerShape, LayerState
from cost_models.errors import CostModelError
from cost_models.lut_apb import APBPricer, monotone_fit
from hardware_profiles import load_profile, resolve_lookup_table
from hardware_profiles.errors import ProfileError
from hardware_profiles.lut_table import LookupTable, LutAPBEntry, LutEntry, load_lookup_table
from hwsbs.cli.main import main
from hwsbs.errors import ConfigError
from hwsbs.export import default_spec
from hwsbs.export.apb import APBKernelLayer
from hwsbs.lut.apb import apb_jobs, apb_layer, parse_apb_shares
from hwsbs.lut.builder import MeasureSettings, plan_jobs
from hwsbs.lut.profile_io import write_table
from hwsbs.sbs.convert import convert_model
from tests.helpers import tiny_argv
from tests.test_lut import TINY_BUILD

CONV2 = LayerShape("conv2", "conv", 32, 64, (3, 3), (1, 1), 1, (8, 8), (8, 8))


@pytest.fixture(scope="module")
def apb_profile(tmp_path_factory):
    """small_cnn measured with APB entries at three shares, very few repeats (seconds)."""
    out = tmp_path_factory.mktemp("hw") / "tiny-apb.yaml"
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(out), "--rounds", "1", "--apb", "0,2,10"]
    assert main([*argv, *TINY_BUILD]) == 0
    return out


def _apb(shape: LayerShape, fp: int, a_bits: int = 8) -> LayerState:
    return LayerState(1, a_bits, shape.in_channels, shape.out_channels, fp_weights=fp)


def _table(apb: list[LutAPBEntry]) -> LookupTable:
    entry = LutEntry(signature=CONV2.signature, w_bits=8, a_bits=8, kept_in=32, kept_out=64, mean_s=1e-4)
    return LookupTable(entries=[entry], apb=apb)


def _entry(share: float, mean_s: float, batch: int = 1, a_bits: int = 8) -> LutAPBEntry:
    return LutAPBEntry(
        signature=CONV2.signature, a_bits=a_bits, fp_share=share, kept_in=32, kept_out=64, batch=batch, mean_s=mean_s
    )


def test_lut_build_apb_round_trip_prices_apb_layers(apb_profile):
    table, _ = resolve_lookup_table(load_profile(apb_profile))
    spec = default_spec("small_cnn")
    space = convert_model(spec.build(), spec.example(), (2, 4, 8))
    measured = {e.signature for e in table.apb}
    assert measured == {space.shapes[n].signature for n in space.layer_names}  # every conv/linear of small_cnn
    assert len(table.apb) == 3 * len(measured) and {round(e.fp_share, 2) for e in table.apb} == {0.0, 0.02, 0.1}
    assert load_lookup_table(resolve_lookup_table(load_profile(apb_profile))[1]) == table  # reads back exactly
    cm = cost_model_for(load_profile(apb_profile))
    assert cm.prices_apb
    shape = space.shapes["conv2"]
    costs = [cm.layer_cost(shape, _apb(shape, fp)) for fp in (0, 100, 500, 2000, 4000)]
    assert all(c > 0 for c in costs) and costs == sorted(costs)
    assert cm.layer_cost(shape, _apb(shape, 0), batch=4) == pytest.approx(4 * costs[0])


def test_apb_pricing_is_monotone_in_the_share_and_interpolates():
    noisy = [_entry(0.0, 2.0e-4), _entry(0.01, 1.8e-4), _entry(0.02, 2.4e-4), _entry(0.1, 4.0e-4)]
    pricer = APBPricer(_table(noisy), "t.yaml")
    weights = CONV2.weight_count()
    shares = [0.0, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.2]
    costs = [pricer.spread(CONV2, _apb(CONV2, round(s * weights)))[0] for s in shares]
    assert costs == sorted(costs)  # the noisy dip at 1% is pooled away
    assert costs[0] == pytest.approx(1.9e-4)  # mean of the violating pair
    assert costs[5] == pytest.approx(2.4e-4 + (0.05 - 0.02) / 0.08 * 1.6e-4, rel=1e-3)
    assert costs[7] == pytest.approx(4.0e-4 + 1.6e-4 / 0.08 * 0.1, rel=1e-3)  # last slope beyond 10%
    assert pricer.spread(CONV2, _apb(CONV2, 0, a_bits=4))[0] == costs[0]  # the next wider measured width


def test_monotone_fit_pools_adjacent_violators():
    assert monotone_fit([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert monotone_fit([3.0, 2.0, 1.0]) == [2.0, 2.0, 2.0]
    assert monotone_fit([]) == []


def test_old_table_without_apb_loads_and_refuses_apb_layers_in_one_line(tmp_path):
    profile = load_profile("epyc-2c")  # the built-in table predates the apb section
    table, _ = resolve_lookup_table(profile)
    assert table.apb == []
    cm = cost_model_for(profile)
    assert not cm.prices_apb
    shape = LayerShape("layer1.0.conv1", "conv", 16, 16, (3, 3), (1, 1), 1, (32, 32), (32, 32))
    assert cm.layer_cost(shape, LayerState(8, 8, 16, 16)) > 0  # ordinary layers as before
    with pytest.raises(CostModelError) as err:
        cm.layer_cost(shape, _apb(shape, 10))
    assert len(str(err.value).splitlines()) == 1 and "lut build --apb" in str(err.value)
    write_table(table, tmp_path / "old.yaml")  # no apb section is written for a table without one
    assert "apb:" not in (tmp_path / "old.yaml").read_text()


def test_apb_entry_missing_for_a_signature_or_width_is_one_line():
    pricer = APBPricer(_table([_entry(0.0, 1e-4), _entry(0.1, 2e-4)]), "t.yaml")
    other = LayerShape("conv3", "conv", 64, 64, (3, 3), (2, 2), 1, (8, 8), (4, 4))
    for shape, state, needle in [(other, _apb(other, 5), "no APB entry"), (CONV2, _apb(CONV2, 5, 32), "32-bit")]:
        with pytest.raises(CostModelError, match=needle) as err:
            pricer.spread(shape, state)
        assert len(str(err.value).splitlines()) == 1


def test_repeated_apb_entries_are_rejected(tmp_path):
    table = _table([_entry(0.0, 1e-4), _entry(0.1, 2e-4)])
    path = write_table(table, tmp_path / "t.yaml")
    text = path.read_text()
    path.write_text(text + text[text.index("apb:") + 5 :])  # the apb rows once more
    with pytest.raises(ProfileError, match="repeats apb"):
        load_lookup_table(path)


def test_apb_layer_is_the_exported_kernel_with_exact_outlier_counts():
    job = next(j for j in plan_jobs([default_spec("small_cnn")], grid=2) if j.signature == CONV2.signature)
    x = torch.rand(2, 32, 8, 8)
    layer, count = apb_layer(job, 0.05, 8, x, MeasureSettings(backend="intmm"))
    assert isinstance(layer, APBKernelLayer) and layer.bitwise and layer.activation == "relu"
    assert count == round(0.05 * CONV2.weight_count()) == int(layer.values.size)  # CSR holds exactly the outliers
    assert tuple(layer(x).shape) == (2, 64, 8, 8)
    assert {j.kind for j in apb_jobs(plan_jobs([default_spec("small_cnn")], grid=2))} == {"conv", "linear"}


@pytest.mark.parametrize("text", ["5", "a,b", "0,100", "-1,5"])
def test_parse_apb_shares_rejects_bad_percentages(text):
    with pytest.raises(ConfigError, match="--apb"):
        parse_apb_shares(text)


@pytest.mark.parametrize(
    "extra,needle",
    [(["--apb", "5"], "at least two distinct"), (["--apb", "--runtime", "onnxruntime"], "drop --runtime")],
)
def test_lut_build_apb_bad_input_is_one_line(extra, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lut", "build", "--model", "small_cnn", "--out", "x.yaml", "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.slow
def test_apb_search_on_the_measured_table_and_an_old_table_refuses_its_config(apb_profile, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_argv("search", "--method", "apb", hw=apb_profile) + ["--out", str(run)]) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["cost_model"] == "lut" and result["binary_fraction"] > 0.5
    capsys.readouterr()
    assert main(["cost", "--config", str(run / "config.yaml"), "--hw", "epyc-2c"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "no APB entries" in err[-1] and "lut build --apb" in err[-1]
