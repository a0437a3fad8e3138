"""End-to-end searches on the built-in digits data with tiny schedules."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import hwsbs
from cost_models import build_cost_model
from cost_models.base import LayerState
from hwsbs.config import SearchConfig
from hwsbs.pipeline import run_search
from hwsbs.sbs.config_io import load_config
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_schedule

TINY = tiny_schedule(subset=512, pretrain_epochs=3, search_epochs=3, threshold_lr=0.2, hw="a100", cost="bops")


@pytest.fixture(scope="module")
def weak_and_strong(tmp_path_factory):
    out = {}
    for label, lam in (("weak", 0.001), ("strong", 20.0)):
        d = tmp_path_factory.mktemp(label)
        out[label] = run_search(SearchConfig(**TINY, lam=lam, out=str(d)))
    return out


def test_strong_lambda_ends_cheaper(weak_and_strong):
    weak, strong = weak_and_strong["weak"], weak_and_strong["strong"]
    assert strong.cost["compressed"] < weak.cost["compressed"]
    assert strong.accuracy["compressed"] > 0.5  # still a working classifier


def test_result_json_is_consistent(weak_and_strong):
    result = weak_and_strong["strong"]
    data = json.loads((result.run_dir / "result.json").read_text())
    for key in ("hardware", "cost_model", "metric", "unit", "accuracy", "cost", "layers"):
        assert key in data
    assert set(data["accuracy"]) >= {"full_precision", "compressed"}
    assert set(data["cost"]) >= {"full_precision", "uniform_8bit", "compressed"}
    assert sum(layer["cost"] for layer in data["layers"]) == pytest.approx(data["cost"]["compressed"], rel=1e-12)
    config = load_config(result.run_dir / "config.yaml")
    bops = build_cost_model("bops")
    all8 = sum(
        bops.layer_cost(d.shape, LayerState(8, 8, d.shape.in_channels, d.shape.out_channels)) for d in config.layers
    )
    assert data["cost"]["uniform_8bit"] == pytest.approx(all8, rel=1e-12)
    assert data["cost"]["full_precision"] == pytest.approx(all8 * 16, rel=1e-12)  # 32x32 vs 8x8 bits
    for layer in data["layers"]:
        assert layer["w_bits"] in (2, 4, 8) and layer["a_bits"] in (2, 4, 8)
        assert isinstance(layer["kept_out_channels"], int) and isinstance(layer["out_channels"], int)
    assert (result.run_dir / "layers.png").stat().st_size > 1000


def test_first_and_last_layers_stay_at_8_bits(weak_and_strong):
    layers = weak_and_strong["strong"].layers
    assert (layers[0]["w_bits"], layers[0]["a_bits"]) == (8, 8)
    assert (layers[-1]["w_bits"], layers[-1]["a_bits"]) == (8, 8)


def test_finetuned_model_has_the_channel_counts_of_config_yaml(weak_and_strong):
    result = weak_and_strong["strong"]
    config = load_config(result.run_dir / "config.yaml")
    assert any(d.pruned_channels for d in config.layers), "the strong search should prune something"
    modules = dict(result.model.named_modules())
    for d in config.layers:
        m = modules[d.shape.name]
        out_ch = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        in_ch = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
        assert out_ch == d.kept_out
        assert in_ch == d.state.kept_in
        assert (m.fixed_w_bits, m.fixed_a_bits) == (d.w_bits, d.a_bits)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        if x.sum() > 0:  # fx cannot trace a branch on a tensor value
            x = torch.relu(self.conv2(x))
        else:
            x = torch.relu(self.conv2(-x))
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_searches_bits_without_pruning(tmp_path):
    train, val = digits_loaders()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = tiny_schedule(hw="a100", cost="bops", lam=1.0, out=str(tmp_path / "run"))
        result = hwsbs.search(Untraceable(), train, val, **options)
    messages = [str(w.message) for w in caught]
    assert any("pruning disabled" in m and "torch.fx cannot trace" in m for m in messages)
    assert all(layer["kept_out_channels"] == layer["out_channels"] for layer in result.layers)
    assert result.accuracy["compressed"] == result.accuracy["compressed"]  # not NaN


def test_python_api_on_user_model_and_loaders(tmp_path):
    train, val = digits_loaders()
    model = pretrained_small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = hwsbs.search(
        model, train, val, **tiny_schedule(hw="a100", cost="bops", pretrain_epochs=0, out=str(tmp_path / "api"))
    )
    assert isinstance(result, hwsbs.SearchResult)
    assert result.to_dict()["cost"]["compressed"] == result.cost["compressed"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model is untouched
    assert result.accuracy["full_precision"] > 0.8


def test_budget_form_meets_a_reachable_target(tmp_path):
    result = run_search(
        SearchConfig(**{**TINY, "search_epochs": 4}, lam=1.0, target_fraction=0.3, out=str(tmp_path / "b"))
    )
    assert result.cost["compressed"] <= 0.3 * result.cost["uniform_8bit"] * 1.05


def test_resume_of_a_finished_run_returns_the_same_result(tmp_path, weak_and_strong):
    first = weak_and_strong["weak"]
    again = run_search(SearchConfig(**TINY, lam=0.001, out=str(first.run_dir), resume=True))
    assert again.cost == first.cost and again.accuracy == first.accuracy


def test_existing_run_dir_without_resume_is_refused(weak_and_strong):
    with pytest.raises(hwsbs.HwsbsError, match="already holds a run"):
        run_search(SearchConfig(**TINY, out=str(weak_and_strong["weak"].run_dir)))
