"""The same model searched for two devices: different answers, each cheaper where it was searched."""

from __future__ import annotations

import json

import pytest

from cost_models import cost_model_for
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.pipeline import run_search
from hwsbs.sbs.config_io import load_config
from tests.helpers import tiny_schedule

SCHEDULE = tiny_schedule(subset=512, pretrain_epochs=3, search_epochs=4, lam=20.0, threshold_lr=0.2, seed=0)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    return {
        hw: run_search(SearchConfig(hw=hw, out=str(tmp_path_factory.mktemp(hw)), **SCHEDULE))
        for hw in ("h100", "bismo")
    }


def test_h100_and_bismo_find_different_configurations_each_cheaper_at_home(searched):
    h100, bismo = searched["h100"], searched["bismo"]
    key = [(layer["w_bits"], layer["a_bits"], layer["kept_out_channels"]) for layer in h100.layers]
    assert key != [(layer["w_bits"], layer["a_bits"], layer["kept_out_channels"]) for layer in bismo.layers]
    on_h100, on_bismo = cost_model_for("h100"), cost_model_for("bismo")
    assert h100.config.cost(on_h100) < bismo.config.cost(on_h100)
    assert bismo.config.cost(on_bismo) < h100.config.cost(on_bismo)
    # H100 has no sub-8-bit arithmetic: its search gains nothing from fewer bits and prunes instead.
    assert h100.cost["compressed"] < h100.cost["uniform_8bit"]
    assert any(layer["kept_out_channels"] < layer["out_channels"] for layer in h100.layers)


@pytest.mark.parametrize("hw", ["h100", "bismo"])
def test_hwsbs_cost_reproduces_the_searchs_own_cost(searched, hw, capsys):
    result = searched[hw]
    assert main(["cost", "--config", str(result.run_dir / "config.yaml"), "--hw", hw, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    (row,) = printed["results"]
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert row["cost"] == pytest.approx(saved["cost"]["compressed"], rel=1e-12)
    assert row["uniform8"] == pytest.approx(saved["cost"]["uniform_8bit"], rel=1e-12)
    assert row["full_precision"] == pytest.approx(saved["cost"]["full_precision"], rel=1e-12)
    assert load_config(result.run_dir / "config.yaml").cost(cost_model_for(hw)) == pytest.approx(
        saved["cost"]["compressed"]
    )
