"""Every built-in model converts, searches and fine-tunes: on CIFAR-10 images (slow) and on tensors."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch.utils.data import TensorDataset

import hwsbs
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.data.archive import extract_cifar10_subset, find_cifar10_archive
from hwsbs.models import build_model
from hwsbs.pipeline import run_search
from tests.helpers import tiny_argv, tiny_schedule

MODELS = ["small_cnn", "resnet20", "resnet32", "resnet56", "mobilenetv2", "resnet18", "resnet50"]
ONE_EPOCH = dict(pretrain_epochs=1, search_epochs=1, finetune_epochs=1, lam=1.0, progress=False, hw="a100", cost="bops")


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    archive = find_cifar10_archive()
    if archive is None:
        pytest.skip("CIFAR-10 archive not found (set HWSBS_CIFAR10_ARCHIVE or put shared/data beside the checkout)")
    # 26 train images per class -> 260, capped to 256 by --subset; 4 test images per class.
    return extract_cifar10_subset(archive, tmp_path_factory.mktemp("cifar"), 26, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_each_builtin_model_on_a_cifar10_subset(name, cifar_subset, tmp_path):
    result = run_search(
        SearchConfig(
            model=name,
            data="imagefolder",
            data_dir=str(cifar_subset),
            subset=256,
            batch_size=64,
            out=str(tmp_path / name),
            **ONE_EPOCH,
        )
    )
    assert result.cost["compressed"] <= result.cost["uniform_8bit"]
    assert 0.0 <= result.accuracy["compressed"] <= 1.0
    assert (tmp_path / name / "result.json").is_file()


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_builtin_models_on_synthetic_tensors(name, tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
    data = TensorDataset(x, y)
    model = build_model(name, 10, 3, (8, 8))
    result = hwsbs.search(
        model, data, data, **tiny_schedule(hw="a100", cost="bops", batch_size=16, out=str(tmp_path / "run"))
    )
    assert len(result.layers) == sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


def test_user_model_as_module_factory_end_to_end(tmp_path, monkeypatch, capsys):
    (tmp_path / "user_nets_e2e.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def build(num_classes=10, in_channels=1):
            return nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert main(tiny_argv("search", "--model", "user_nets_e2e:build", "--out", str(out))) == 0
    config = hwsbs.load_config(out / "config.yaml")
    assert config.model == "user_nets_e2e:build"
    assert [d.shape.name for d in config.layers] == ["0", "3", "8"]
