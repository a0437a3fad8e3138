"""``lut build --channel-split``: split layers measured, ``channel_split`` fitted, lut pricing of mixed layers."""

from __future__ import annotations

import math

import pytest
import torch

from cost_models import cost_model_for
from cost_models.base import LayerShape, LayerState
from hardware_profiles import load_profile
from hwsbs.cli.main import main
from hwsbs.errors import ConfigError
from hwsbs.export import default_spec
from hwsbs.export.mixed import MixedExportedLayer
from hwsbs.lut import MeasureSettings, SplitSample, build_profile, measure_channel_split, plan_jobs, split_jobs
from hwsbs.lut.machine import machine_info
from hwsbs.lut.split import fit_overhead, split_layer, split_rows
from tests.test_lut import TINY_BUILD

CONV2 = LayerShape("conv2", "conv", 32, 64, (3, 3), (1, 1), 1, (8, 8), (8, 8))  # small_cnn's


@pytest.fixture(scope="module")
def split_profile(tmp_path_factory):
    """small_cnn's table and its channel-split overhead, very few repeats (seconds)."""
    out = tmp_path_factory.mktemp("hw") / "tiny-split.yaml"
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(out), "--rounds", "1", "--channel-split"]
    assert main([*argv, *TINY_BUILD]) == 0
    return out


def _plain(profile):
    """The same table without split execution: a mixed layer at its widest group."""
    return cost_model_for(profile.model_copy(update={"channel_split": None}))


def test_build_writes_a_measured_channel_split_and_says_how(split_profile):
    profile = load_profile(split_profile)
    split = profile.channel_split
    assert split is not None and split.supported
    assert math.isfinite(split.per_split_overhead_s) and split.per_split_overhead_s >= 0
    line = next(s for s in profile.sources if s.startswith("channel_split: measured with `hwsbs lut build"))
    assert "--channel-split" in line and "small_cnn" in line
    for needle in (str(machine_info()["cpu"]), "runtime torch", "threads 1", "batch 1", "layer shapes"):
        assert needle in line
    assert any(s.startswith("Measured with") for s in profile.sources)  # the table's own lines stay


@pytest.mark.parametrize("groups", [((2, 32), (8, 32)), ((2, 16), (4, 16), (8, 32))])
def test_lut_prices_a_mixed_layer_as_its_parts_plus_the_overhead(split_profile, groups):
    profile = load_profile(split_profile)
    overhead = profile.channel_split.per_split_overhead_s
    state = LayerState(8, 8, 32, 64, w_bits_groups=groups)
    plain = _plain(profile)
    parts = sum(plain.layer_cost(CONV2, LayerState(b, 8, 32, n)) for b, n in groups)
    priced = cost_model_for(profile).layer_cost(CONV2, state)
    assert priced == pytest.approx(parts + overhead * (len(groups) - 1), rel=1e-9)
    widest = plain.layer_cost(CONV2, state)
    assert widest == plain.layer_cost(CONV2, LayerState(8, 8, 32, 64))  # without the block: the widest group
    assert priced != pytest.approx(widest, rel=1e-6)


def test_measure_api_fits_the_clipped_median_against_the_table(split_profile):
    profile = load_profile(split_profile)
    jobs = [j for j in plan_jobs([default_spec("small_cnn")], grid=2) if j.signature == CONV2.signature]
    assert split_jobs(jobs, group_size=4) == jobs
    settings = MeasureSettings(repeats=1, warmup=0, rounds=1, min_time_s=0.0)
    fit = measure_channel_split(jobs, profile, settings, bits=(2, 4, 8), group_size=4)
    assert [s.groups for s in fit.samples] == [((2, 32), (8, 32)), ((2, 24), (4, 20), (8, 20))]
    plain = _plain(profile)
    for s in fit.samples:
        assert s.measured_s > 0 and s.a_bits == 8
        assert s.parts_s == pytest.approx(sum(plain.layer_cost(CONV2, LayerState(b, 8, 32, n)) for b, n in s.groups))
        assert s.widest_s == pytest.approx(plain.layer_cost(CONV2, LayerState(8, 8, 32, 64)))
    assert fit.per_split_overhead_s == fit_overhead(fit.samples) >= 0
    assert fit.channel_split().per_split_overhead_s == pytest.approx(fit.per_split_overhead_s, rel=1e-3)


def test_fit_overhead_is_the_median_per_extra_part_clipped_at_zero():
    def sample(measured: float, parts: float, n: int) -> SplitSample:
        groups = tuple((b, 4) for b in (2, 4, 8)[:n])
        return SplitSample("sig", 1, 8, groups, measured, parts, parts)

    # per extra part: 1.0, 1.5 ((4 - 1) / 2), 10.0 -> median 1.5
    assert fit_overhead([sample(3.0, 2.0, 2), sample(4.0, 1.0, 3), sample(12.0, 2.0, 2)]) == 1.5
    assert fit_overhead([sample(1.0, 2.0, 2), sample(1.5, 2.0, 2), sample(9.0, 2.0, 2)]) == 0.0  # noise below 0
    assert fit_overhead([]) == 0.0


def test_split_layer_is_the_exports_mixed_layer():
    assert split_rows(10, (2, 4, 8), 4) == (2, 2, 2, 2, 4, 4, 4, 4, 8, 8)
    job = next(j for j in plan_jobs([default_spec("small_cnn")]) if j.signature == CONV2.signature)
    x = torch.rand(2, 32, 8, 8)
    module = split_layer(job, split_rows(64, (2, 8), 4), 8, x, MeasureSettings())
    mixed = [m for m in module.modules() if isinstance(m, MixedExportedLayer)]
    assert len(mixed) == 1 and [p.record.out_channels for p in mixed[0].parts] == [32, 32]
    assert [p.record.w_bits for p in mixed[0].parts] == [2, 8]
    with torch.no_grad():
        y = module(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == (2, 64, 8, 8) and float(y.min()) >= 0  # its ReLU runs after the concatenation


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--runtime", "onnxruntime"], "ONNX export does not map channel-wise layers"),
        (["--bits", "8"], "needs two or more --bits widths"),
    ],
)
def test_channel_split_refusals_are_one_line(extra, needle, capsys, tmp_path):
    out = tmp_path / "x.yaml"
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(out), "--channel-split", "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "--channel-split" in err
    assert not out.exists()


def test_api_refuses_onnxruntime_before_measuring(tmp_path):
    out = tmp_path / "x.yaml"
    settings = MeasureSettings(runtime="onnxruntime")
    with pytest.raises(ConfigError, match="--runtime torch"):
        build_profile([default_spec("small_cnn")], out, settings, threads=1, progress=False, channel_split=True)
    assert not out.exists()
