"""Measured lookup tables: planning, building a valid profile, the fidelity check, the built-in one."""

from __future__ import annotations

import json
import random

import pytest

from cost_models import cost_model_for
from hardware_profiles import load_profile, resolve_lookup_table
from hwsbs.cli.main import main
from hwsbs.export import ModelSpec, default_spec, onednn_available
from hwsbs.lut.builder import executed_pairs, grid_points, plan_jobs
from hwsbs.lut.configs import kept_channels, random_config, uniform_config
from hwsbs.lut.fidelity import summarise
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import apply_config
from hwsbs.testing.cost_models import check_cost_model
from tests.helpers import tiny_argv

TINY_BUILD = ["--repeats", "2", "--warmup", "0", "--grid", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """A profile measured for small_cnn with very few repeats (seconds)."""
    out = tmp_path_factory.mktemp("hw") / "tiny-cpu.yaml"
    assert main(["lut", "build", "--model", "small_cnn", "--conformance-shapes", "--out", str(out), *TINY_BUILD]) == 0
    return out


def test_kept_channel_grid_stays_on_whole_groups():
    assert kept_channels(64, 4, 0.5) == (32, 64)
    assert kept_channels(10, 4, 0.5) == (6, 10)  # 3 groups (4, 4, 2): one of the 4s may go
    assert grid_points(64, 32, 3, 4) == [32, 48, 64]
    assert grid_points(16, 8, 4, 4) == [8, 12, 16]
    assert grid_points(16, 16, 3, 4) == [16]


def test_plan_covers_every_signature_with_grids_where_pruning_reaches():
    jobs = {j.signature: j for j in plan_jobs([default_spec("small_cnn")], grid=3)}
    assert set(jobs) == {
        "conv_k3x3_s1x1_g1_i1_o32_h8x8",
        "conv_k3x3_s1x1_g1_i32_o64_h8x8",
        "conv_k3x3_s2x2_g1_i64_o64_h8x8",
        "linear_i64_o10_n1",
    }
    assert sorted(jobs["conv_k3x3_s1x1_g1_i32_o64_h8x8"].kout) == [32, 48, 64]  # conv2 prunes its outputs
    assert sorted(jobs["conv_k3x3_s2x2_g1_i64_o64_h8x8"].kin) == [32, 48, 64]  # conv3 reads them
    assert jobs["conv_k3x3_s1x1_g1_i1_o32_h8x8"].act_signed  # the image is signed


def test_plan_depthwise_layers_get_a_line_not_a_grid():
    jobs = plan_jobs([ModelSpec("tests.test_export:tiny_net", 10, 3, (8, 8))], grid=2)
    dw = [j for j in jobs if j.depthwise]
    assert dw and all(all(i == o for i, o in j.points()) for j in dw)
    assert any(len(j.points()) == 2 for j in dw)


def test_executed_pairs_name_the_kernels():
    assert [(w, a) for w, a, _ in executed_pairs("intmm")] == [(8, 8), (32, 32)]
    assert [(w, a) for w, a, _ in executed_pairs("float")] == [(8, 8), (32, 32)]
    if onednn_available():
        from hwsbs.export import onednn_saturates

        pairs = [(w, a) for w, a, _ in executed_pairs("onednn")]
        assert pairs == ([(8, 7), (6, 8), (8, 8), (32, 32)] if onednn_saturates() else [(8, 8), (32, 32)])


def test_random_configs_respect_pinning_and_pruning_caps():
    spec = ModelSpec("tests.test_export:tiny_net", 10, 3, (8, 8))
    space = convert_model(spec.build(), spec.example(), (2, 4, 8))
    assert space.groups
    rng = random.Random(0)
    for _ in range(3):
        config = random_config(space, rng, (2, 4, 8))
        by_name = config.by_name()
        assert (by_name["stem"].w_bits, by_name["fc"].w_bits) == (8, 8)
        for g in space.groups:
            pruned = by_name[g.producer].pruned_channels
            assert len(pruned) <= space.shapes[g.producer].out_channels // 2
            assert by_name[g.consumer].state.kept_in == space.shapes[g.consumer].in_channels - len(pruned)
        apply_config(convert_model(spec.build(), spec.example(), (2, 4, 8)), config)  # a valid config


def test_summary_metrics():
    s = summarise([1.0, 2.1, 2.7, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert s["mape"] == pytest.approx((0 + 0.05 + 0.1 + 0) / 4)
    assert s["within_10pct"] == 1.0 and s["spearman"] == pytest.approx(1.0)
    assert summarise([2.0, 1.0, 3.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(0.5)


def test_lut_build_writes_a_valid_profile_the_lut_model_can_use(tiny_profile):
    profile = load_profile(tiny_profile)
    assert profile.name == "tiny-cpu" and profile.cost_model.name == "lut"
    table, where = resolve_lookup_table(profile)
    assert where.endswith("tables/tiny-cpu.yaml") and table.fallback == "next_wider"
    assert "command: hwsbs lut build" in tiny_profile.read_text()
    assert any("Measured with `hwsbs lut build --model small_cnn" in s for s in profile.sources)
    model = cost_model_for(profile)
    spec = default_spec("small_cnn")
    space = convert_model(spec.build(), spec.example(), (2, 4, 8))
    costs = {b: uniform_config(space, b).cost(model) for b in (2, 4, 8, 16, 32)}
    assert all(c > 0 for c in costs.values())
    assert costs[2] == costs[4]  # same int8 kernel: bits below it cost the same
    random_cost = random_config(space, random.Random(1), (2, 4, 8)).cost(model)
    assert random_cost > 0
    check_cost_model(model)  # --conformance-shapes measured the conformance zoo too


def test_search_accepts_the_measured_profile(tiny_profile, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_argv("search", "--out", str(out), hw=tiny_profile, subset=128)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["hardware"] == "tiny-cpu" and result["cost_model"] == "lut" and result["unit"] == "s"


def test_lut_check_reports_measured_against_predicted(tiny_profile, capsys):
    code = main(
        [
            "lut",
            "check",
            "--hw",
            str(tiny_profile),
            "--hw",
            "x86-avx512",
            "--configs",
            "4",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--no-progress",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["configs"]) == 4 and all(c["measured_s"] > 0 for c in report["configs"])
    names = [p["profile"] for p in report["profiles"]]
    assert names == ["tiny-cpu", "x86-avx512"]
    for p in report["profiles"]:
        assert {"mape", "spearman", "within_10pct", "median_ratio"} <= set(p)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["check", "--hw", "nosuchhw"], "unknown hardware profile 'nosuchhw'"),
        (["build", "--model", "nosuchnet", "--out", "x.yaml"], "unknown model 'nosuchnet'"),
        (["build", "--model", "small_cnn@big", "--out", "x.yaml"], "expected NAME or NAME@SIZE"),
        (["build", "--model", "small_cnn", "--out", "bad name!.yaml"], "must be a profile name"),
    ],
)
def test_lut_bad_input_is_one_line(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lut", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.parametrize("model,size", [("small_cnn", 8), ("resnet20", 32)])
def test_builtin_measured_profile_covers_the_builtin_models(model, size):
    profile = load_profile("epyc-2c")
    assert profile.kind == "cpu" and profile.cost_model.name == "lut"
    cm = cost_model_for(profile)
    spec = default_spec(model, image_size=size)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8))
    rng = random.Random(0)
    for config in [uniform_config(space, b) for b in (2, 4, 8, 32)] + [
        random_config(space, rng, (2, 4, 8)) for _ in range(3)
    ]:
        assert config.cost(cm) > 0
