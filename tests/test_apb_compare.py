"""benchmarks/apb_compare.py's building blocks: its rows, the size budget, APB fine-tuning models, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import apb_compare  # noqa: E402
import frontier  # noqa: E402

from cost_models import build_cost_model  # noqa: E402
from hwsbs.apb.format import is_apb_layer  # noqa: E402
from hwsbs.models import build_model  # noqa: E402
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision  # noqa: E402
from hwsbs.sbs.convert import searchable_shapes  # noqa: E402


def test_plan_puts_sbs_and_apb_at_the_uniform_2bit_size():
    jobs = apb_compare.plan()
    assert [(j.label, j.method, j.budget) for j in jobs] == [
        ("uniform2", "uniform", None),
        ("sbs@u2size", "sbs", "u2size"),
        ("apb@u2size", "apb", "u2size"),
        ("apb", "apb", None),
    ]
    assert jobs[0].options == {"uniform_bits": 2}
    assert all(j.options == {"cost": "size"} for j in jobs[1:])
    assert [j.label for j in apb_compare.plan(["apb", "uniform2"])] == ["uniform2", "apb"]  # table order
    with pytest.raises(ValueError, match="unknown rows"):
        apb_compare.plan(["sbs@u4"])


def test_size_budget_is_uniform_2bit_with_8bit_first_and_last_layers():
    fp = build_model("resnet20", 10, 3, 32)
    example = torch.randn(2, 3, 32, 32)
    order, shapes = searchable_shapes(fp, example)
    weights = [shapes[n].weight_count() for n in order]
    expected = 8 * (weights[0] + weights[-1]) + 2 * sum(weights[1:-1])
    assert apb_compare.uniform_size_bits(fp, example) == expected
    assert apb_compare.uniform_size_bits(fp, example, bits=4) == expected + 2 * sum(weights[1:-1])


def _apb_config(model: torch.nn.Module, example: torch.Tensor, fp: dict[str, int]) -> CompressionConfig:
    order, shapes = searchable_shapes(model, example)
    decisions = [
        LayerDecision(shapes[n], 1, 8, fp_weights=fp[n]) if n in fp else LayerDecision(shapes[n], 8, 8) for n in order
    ]
    return CompressionConfig(decisions)


def test_fine_tuning_model_has_exactly_the_configured_outliers():
    torch.manual_seed(0)
    fp = build_model("small_cnn", 10, 1, 8)
    example = torch.randn(4, 1, 8, 8)
    config = _apb_config(fp, example, {"conv2": 37, "conv3": 0})
    model = apb_compare.apb_compressed_model(fp, config, example)
    for name, count in {"conv2": 37, "conv3": 0}.items():
        layer = model.get_submodule(name)
        assert is_apb_layer(layer) and bool(layer.apb_frozen) and int((~layer.apb_mask).sum()) == count
    assert not is_apb_layer(model.get_submodule("conv1"))
    assert model(example).shape == (4, 10)
    assert config.cost(build_cost_model("size")) > 0
    plain = _apb_config(fp, example, {})  # no APB layer: frontier's model unchanged
    assert not any(is_apb_layer(m) for m in apb_compare.apb_compressed_model(fp, plain, example).modules())


def test_the_apb_aware_finetune_patch_is_undone():
    original = frontier.build_compressed_model
    with apb_compare._apb_aware_finetune():
        assert frontier.build_compressed_model is apb_compare.apb_compressed_model
    assert frontier.build_compressed_model is original


def test_summary_and_table_carry_size_latency_and_binary_fraction():
    def row(label: str, method: str, acc: float, **extra: float) -> dict:
        common = dict(val_accuracy=acc, test_accuracy=acc, size_bits=8e5, apb_cpu_s=1e-3, a100_s=2e-7, search_s=10.0)
        return {"label": label, "method": method, "a100_prices_outliers": method == "uniform", **common, **extra}

    rows = [
        row("uniform2", "uniform", 0.4),
        row("uniform2", "uniform", 0.5),
        row("apb@u2size", "apb", 0.5, binary_fraction=0.97),
        row("apb@u2size", "apb", 0.6, binary_fraction=0.99),
    ]
    summary = apb_compare.summarise_rows(rows)
    apb = summary[1]
    assert apb["binary_fraction"] == pytest.approx(0.98) and apb["test_accuracy"] == pytest.approx(0.55)
    assert apb["size_bits"] == 8e5 and not apb["a100_prices_outliers"] and "binary_fraction" not in summary[0]
    table = apb_compare.markdown(summary).splitlines()
    assert table[2].startswith("| uniform2 | 45.00 +- 7.07 | 45.00 | 100.0 | 1.000 | 0.200 | - | 10 |")
    assert "| 0.200* | 0.9800 |" in table[3] and table[-1].startswith("\\* roofline")
