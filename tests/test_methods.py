"""The baselines (random, optuna, multipath) end to end on digits, and multipath's cost gradient."""

from __future__ import annotations

import pytest
import torch

from cost_models import build_cost_model
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError
from hwsbs.methods import list_methods
from hwsbs.methods.multipath import MultiPathConv2d, MultiPathSearch
from hwsbs.pipeline import run_search
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.engine import CostObjective
from tests.helpers import digits_loaders, pretrained_small_cnn

TINY = dict(subset=256, pretrain_epochs=1, search_epochs=1, finetune_epochs=1, progress=False, hw="a100", cost="bops")
BASELINES = ("random", "optuna", "multipath")


def _run(tmp_path, name: str, **options):
    return run_search(SearchConfig(**{**TINY, **options}, out=str(tmp_path / name)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return {m: _run(root, m, method=m) for m in BASELINES}


def test_baselines_are_registered():
    assert set(BASELINES) <= set(list_methods())


@pytest.mark.parametrize("method", BASELINES)
def test_method_runs_end_to_end(results, method):
    result = results[method]
    assert result.method == method
    assert 0.0 <= result.accuracy["compressed"] <= 1.0
    assert 0 < result.cost["compressed"] <= result.cost["uniform_8bit"]
    assert (result.layers[0]["w_bits"], result.layers[-1]["a_bits"]) == (8, 8)  # pinned
    assert (result.run_dir / "result.json").is_file()
    assert any(h["phase"] == "search" for h in result.history)


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_default_budget_is_uniform_4bit(results, method):
    result = results[method]
    u4 = CompressionConfig(
        [
            LayerDecision(
                d.shape,
                8 if i in (0, len(result.config.layers) - 1) else 4,
                8 if i in (0, len(result.config.layers) - 1) else 4,
            )
            for i, d in enumerate(result.config.layers)
        ]
    ).cost(build_cost_model("bops"))
    assert result.cost["compressed"] <= u4 * (1 + 1e-12)


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_explicit_target_is_respected(tmp_path, method):
    target = 2.0e7  # BOPs; uniform 4-bit of this model costs about 2.95e7
    result = _run(tmp_path, method, method=method, target=target, extra={"candidates": 3, "trials": 3})
    assert result.cost["compressed"] <= target


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_unreachable_budget_is_an_error(tmp_path, method):
    with pytest.raises(ConfigError, match="cheapest configuration"):
        _run(tmp_path, method, method=method, target=1.0)


@pytest.mark.parametrize("method", BASELINES)
def test_same_seed_same_result(results, tmp_path, method):
    again = _run(tmp_path, method, method=method)
    first = results[method]
    assert [(d.w_bits, d.a_bits, d.pruned_channels) for d in again.config.layers] == [
        (d.w_bits, d.a_bits, d.pruned_channels) for d in first.config.layers
    ]
    assert again.accuracy["compressed"] == first.accuracy["compressed"]


def test_random_seed_changes_the_draws(tmp_path):
    configs = set()
    for seed in (1, 2, 3):
        r = _run(
            tmp_path,
            f"s{seed}",
            method="random",
            seed=seed,
            pretrain_epochs=0,
            finetune_epochs=0,
            extra={"candidates": 2},
        )
        configs.add(tuple((d.w_bits, d.a_bits, tuple(d.pruned_channels)) for d in r.config.layers))
    assert len(configs) > 1


# ---------------------------------------------------------------- multipath internals
def _multipath(lam: float = 0.1, cost: str = "bops") -> MultiPathSearch:
    train, _ = digits_loaders(batch_size=32, subset=128)
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x, (2, 4, 8), prune=False)
    return MultiPathSearch(space, [CostObjective(build_cost_model(cost))], lam, 0.01, 0.05, 5e-4)


def _randomise_logits(search: MultiPathSearch, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in search.paths.values():
            p.beta_w.copy_(torch.randn(p.beta_w.shape, generator=gen) * 2)
            p.beta_a.copy_(torch.randn(p.beta_a.shape, generator=gen) * 2)


def test_searched_layers_are_multipath_and_state_dict_keys_unchanged():
    search = _multipath()
    assert search.searched and all(isinstance(search.space.layer(n), MultiPathConv2d) for n in search.searched)
    train, _ = digits_loaders(batch_size=32, subset=128)
    x, _ = next(iter(train))
    sbs_keys = set(convert_model(pretrained_small_cnn(), x, (2, 4, 8), prune=False).model.state_dict())
    assert set(search.space.model.state_dict()) == sbs_keys  # pipeline checkpoints stay loadable


@pytest.mark.parametrize("cost", ["bops", "size"])
def test_expected_cost_gradient_matches_finite_differences(cost):
    search = _multipath(cost=cost)
    _randomise_logits(search)
    (total,) = search.expected_costs()
    logits = [p for m in search.paths.values() for p in (m.beta_w, m.beta_a)]
    grads = torch.autograd.grad(total, logits)
    h = 1e-3
    for param, grad in zip(logits, grads):
        for i in range(param.numel()):
            with torch.no_grad():
                param[i] += h
            up = search.expected_costs()[0].item()
            with torch.no_grad():
                param[i] -= 2 * h
            down = search.expected_costs()[0].item()
            with torch.no_grad():
                param[i] += h
            fd = (up - down) / (2 * h)
            assert grad[i].item() == pytest.approx(fd, rel=1e-3, abs=1e-6 * total.item())


def test_expected_cost_at_one_hot_logits_is_the_config_cost():
    search = _multipath()
    _randomise_logits(search, seed=3)
    with torch.no_grad():
        for p in search.paths.values():
            p.beta_w.mul_(1e4)
            p.beta_a.mul_(1e4)
    decisions = search.derive()
    expected = search.expected_costs()[0].item()
    assert expected == pytest.approx(CompressionConfig(decisions).cost(build_cost_model("bops")), rel=1e-9)


def test_derived_bits_are_the_argmax():
    search = _multipath()
    _randomise_logits(search, seed=1)
    decisions = {d.shape.name: d for d in search.derive()}
    for name in search.searched:
        p = search.paths[name.replace(".", "/")]
        bits = search.space.layer(name).bits
        assert decisions[name].w_bits == bits[int(p.beta_w.argmax())]
        assert decisions[name].a_bits == bits[int(p.beta_a.argmax())]
        layer = search.space.layer(name)
        assert layer.weight_clip.item() == p.w_clips[int(p.beta_w.argmax())].item()  # chosen path's clip kept


def test_multipath_step_moves_logits_towards_cheaper_paths():
    search = _multipath(lam=5.0)
    train, _ = digits_loaders(batch_size=32, subset=128)
    before = search.expected_costs()[0].item()
    for _ in range(2):
        for x, y in train:
            search.step(x, y)
    assert search.expected_costs()[0].item() < before


def test_multipath_state_round_trips_through_a_fresh_space():
    """What resume does: an SBS-converted model loads the checkpointed weights, then the paths."""
    first = _multipath(lam=1.0)
    train, _ = digits_loaders(batch_size=32, subset=128)
    for x, y in train:
        first.step(x, y)
    second = _multipath(lam=1.0)
    second.space.model.load_state_dict(first.space.model.state_dict())
    second.load_state_dict(first.state_dict())
    assert second.expected_costs()[0].item() == first.expected_costs()[0].item()
    assert [(d.w_bits, d.a_bits) for d in second.derive()] == [(d.w_bits, d.a_bits) for d in first.derive()]
    x, _ = next(iter(train))
    first.space.model.eval()
    second.space.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(second.space.model(x), first.space.model(x))
