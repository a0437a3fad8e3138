"""The random and Optuna baselines at ``--granularity channel`` (issue 17): one weight width per
output-channel group of every searched layer, activations per layer, pruning as at layer
granularity; candidates checkpoint as plain lists and resume."""

from __future__ import annotations

import json
import random

import optuna
import pytest
import torch

import hwsbs.run_state as run_state
from cost_models import build_cost_model, cost_model_for
from hardware_profiles.loader import load_profile
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE
from hwsbs.errors import ConfigError
from hwsbs.methods.base import MethodContext
from hwsbs.methods.random_search import (
    Candidate,
    _repair,
    _sample,
    candidate_config,
    channel_wise_layers,
    cheapest_candidate,
    random_search,
)
from hwsbs.pipeline import run_search
from hwsbs.progress import PhaseProgress
from hwsbs.quant.channel_bits import enable_channel_bits
from hwsbs.sbs.config_io import load_config
from hwsbs.sbs.convert import SearchSpace, convert_model
from hwsbs.sbs.engine import CostObjective
from tests.helpers import digits_loaders, pretrained_small_cnn, tiny_argv, tiny_schedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHANNEL_LAYERS = ("conv2", "conv3")  # small_cnn's searched layers (conv1 and fc are pinned)


def _space(channel: bool) -> SearchSpace:
    train, _ = digits_loaders(batch_size=32, subset=128)
    x, _ = next(iter(train))
    space = convert_model(pretrained_small_cnn(), x, DEFAULT_BITS)
    if channel:  # what the pipeline does at --granularity channel (these layers qualify)
        for name in CHANNEL_LAYERS:
            enable_channel_bits(space.layer(name))
    return space


def _channel_wise(space: SearchSpace) -> bool:
    return any(layer.channel_bits for _, layer in space.layers())


def _ctx(space: SearchSpace, **resume) -> MethodContext:
    def no_data(phase: str, epoch: int):
        raise AssertionError("these tests score no candidate")

    granularity = "channel" if _channel_wise(space) else "layer"
    return MethodContext(
        SearchConfig(method="random", granularity=granularity),
        space,
        [CostObjective(build_cost_model("bops"))],
        no_data,
        None,  # type: ignore[arg-type]  # never read: nothing is evaluated
        torch.device("cpu"),
        PhaseProgress(False),
        lambda *a, **k: None,
        **resume,
    )


@pytest.fixture(scope="module")
def channel_space() -> SearchSpace:
    return _space(channel=True)


# ----------------------------------------------------------------- sampling and repair
def test_sampled_candidates_have_independent_group_widths_and_repair_keeps_them_consistent(channel_space):
    ctx = _ctx(channel_space)
    groups = channel_wise_layers(ctx)
    assert groups == {n: channel_space.layer(n).num_groups for n in CHANNEL_LAYERS}
    uniform4 = candidate_config(ctx, Candidate({n: (4, 4) for n in CHANNEL_LAYERS})).cost(ctx.objectives[0].cost_model)
    budget = 0.7 * uniform4
    rng = random.Random(0)
    for _ in range(5):
        cand = _sample(ctx, rng)
        for name in CHANNEL_LAYERS:
            w, a = cand.bits[name]
            assert isinstance(w, tuple) and len(w) == groups[name] and set(w) <= set(DEFAULT_BITS)
            assert len(set(w)) > 1  # 16 independent draws from 3 widths
            assert a in DEFAULT_BITS
        before = {n: cand.bits[n][0] for n in CHANNEL_LAYERS}
        pruned = {p: list(g) for p, g in cand.pruned.items()}
        fixed = _repair(ctx, cand, budget, rng)
        config = candidate_config(ctx, fixed)
        assert config.cost(ctx.objectives[0].cost_model) <= budget
        for name in CHANNEL_LAYERS:
            w = fixed.bits[name][0]
            # repair only lowers, one group at a time, and never spends a move on a pruned group
            assert all(new <= old for new, old in zip(w, before[name]))
            assert all(w[g] == before[name][g] for g in pruned.get(name, []))
        for decision in config.layers:  # the decisions read the tuple: widest kept group, pruned groups ignored
            name = decision.shape.name
            if name in CHANNEL_LAYERS and decision.group_w_bits:
                w = fixed.bits[name][0]
                kept = [b for g, b in enumerate(w) if g not in set(fixed.pruned.get(name, []))]
                assert decision.group_w_bits == w and decision.w_bits == max(kept)


def test_cheapest_candidate_is_the_floor(channel_space):
    ctx = _ctx(channel_space)
    cand = cheapest_candidate(ctx)
    low = min(DEFAULT_BITS)
    assert {n: cand.bits[n] for n in CHANNEL_LAYERS} == {
        n: ((low,) * channel_space.layer(n).num_groups, low) for n in CHANNEL_LAYERS
    }
    config = candidate_config(ctx, cand)
    assert all(d.w_bits == low and not d.group_w_bits for d in config.layers if d.shape.name in CHANNEL_LAYERS)


def test_layer_granularity_draws_what_it_always_drew():
    """Seeded layer-wise runs are unchanged: the same draws in the same order as before issue 17."""
    ctx = _ctx(_space(channel=False))
    assert channel_wise_layers(ctx) == {}
    for seed in (0, 1):
        rng = random.Random(seed)
        bits = list(DEFAULT_BITS)
        old = {n: (rng.choice(bits), rng.choice(bits)) for n, layer in ctx.space.layers() if not layer.pinned}
        assert _sample(ctx, random.Random(seed)).bits == old


# ----------------------------------------------------------------- checkpoints
def test_candidate_state_round_trips_tuples_through_a_weights_only_checkpoint(channel_space, tmp_path):
    cand = Candidate({"conv2": ((2, 4, 8, 8) * 4, 4), "conv3": (8, 2)}, {"conv2": [1, 3]})
    state = cand.to_state()
    assert json.loads(json.dumps(state)) == state  # plain lists and ints
    torch.save({"best": state}, tmp_path / "c.pt")
    again = Candidate.from_state(torch.load(tmp_path / "c.pt", weights_only=True)["best"])
    assert again == cand and isinstance(again.bits["conv2"][0], tuple) and again.bits["conv3"][0] == 8
    # a resumed random search returns the saved candidate's configuration without scoring anything
    config = random_search(_ctx(channel_space, resume_state={"best": state}))
    conv2 = config.by_name()["conv2"]
    assert conv2.group_w_bits == (2, 4, 8, 8) * 4 and conv2.w_bits == 8
    assert config.by_name()["conv3"].w_bits == 8 and not config.by_name()["conv3"].group_w_bits


# ----------------------------------------------------------------- end to end
def _run(tmp_path, method: str, name: str | None = None, resume: bool = False, **extra):
    options = tiny_schedule(pretrain_epochs=0, finetune_epochs=0, subset=256, seed=0)
    config = SearchConfig(
        **options,
        hw="bismo",
        granularity="channel",
        method=method,
        target_fraction=0.3,
        extra=extra,
        out=str(tmp_path / (name or method)),
        resume=resume,
    )
    return run_search(config, model=pretrained_small_cnn())


class Killed(BaseException):
    """Stands for SIGKILL: nothing in hwsbs catches it."""


def test_random_channel_search_meets_its_target_and_hwsbs_cost_reproduces_it(tmp_path, monkeypatch):
    result = _run(tmp_path, "random", candidates=4)
    saved = json.loads((result.run_dir / "result.json").read_text())
    cost = saved["cost"]["compressed"]
    assert cost <= 0.3 * saved["cost"]["uniform_8bit"] * (1 + 1e-9)
    mixed = [layer for layer in saved["layers"] if isinstance(layer["w_bits"], list)]
    assert mixed and all(len(set(layer["w_bits"])) > 1 for layer in mixed)
    assert "format: hwsbs-config/2" in (result.run_dir / "config.yaml").read_text()
    bismo = cost_model_for(load_profile("bismo"))
    assert load_config(result.run_dir / "config.yaml").cost(bismo) == pytest.approx(cost, rel=1e-9)
    # killed right after the search's checkpoint, the run resumes to the same configuration
    real = run_state.save_checkpoint

    def save(state, run_dir):
        path = real(state, run_dir)
        if state["phase"] == "search":
            raise Killed("after the search checkpoint")
        return path

    monkeypatch.setattr(run_state, "save_checkpoint", save)
    with pytest.raises(Killed):
        _run(tmp_path, "random", "killed", candidates=4)
    monkeypatch.undo()
    resumed = _run(tmp_path, "random", "killed", resume=True, candidates=4)
    assert (resumed.run_dir / "config.yaml").read_text() == (result.run_dir / "config.yaml").read_text()


def test_optuna_suggests_one_weight_width_per_group(tmp_path, monkeypatch):
    studies: list[optuna.Study] = []
    create = optuna.create_study

    def keep(*args, **kwargs):
        studies.append(create(*args, **kwargs))
        return studies[-1]

    monkeypatch.setattr(optuna, "create_study", keep)
    result = _run(tmp_path, "optuna", trials=3)
    (study,) = studies
    space = result.config.by_name()
    for trial in study.trials:
        for name in CHANNEL_LAYERS:
            groups = -(-space[name].shape.out_channels // DEFAULT_GROUP_SIZE)
            assert [f"{name}:w:g{g}" in trial.params for g in range(groups)] == [True] * groups
            assert f"{name}:w" not in trial.params and f"{name}:a" in trial.params
        assert "conv2:pruned_groups" in trial.params
    assert result.cost["compressed"] <= 0.3 * result.cost["uniform_8bit"] * (1 + 1e-9)


# ----------------------------------------------------------------- what stays refused
@pytest.mark.parametrize("method", ["ilp", "multipath"])
def test_other_methods_still_refuse_channel_granularity(method, capsys):
    with pytest.raises(ConfigError, match=f"not implemented with --method {method} \\(methods sbs, random, optuna"):
        SearchConfig(granularity="channel", method=method)
    assert main(tiny_argv("search", "--granularity", "channel", "--method", method, hw="bismo")) == 2
    err = capsys.readouterr().err.strip()
    assert "--granularity channel: not implemented" in err and "\n" not in err


def test_baselines_accept_channel_granularity_but_not_its_sbs_exclusions():
    for method in ("random", "optuna"):
        assert SearchConfig(granularity="channel", method=method).granularity == "channel"
    with pytest.raises(ConfigError, match="not implemented with --weight-group 128"):
        SearchConfig(granularity="channel", method="random", weight_group=128)
    with pytest.raises(ConfigError, match="not implemented with --curvature"):
        SearchConfig(granularity="channel", method="optuna", curvature=True)
