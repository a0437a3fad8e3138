"""Which layers the torch.fx discovery makes prunable, exactly, for every built-in model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwsbs.models import build_model
from hwsbs.quant.layers import SBSConv2d, SBSLinear
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.prunable import find_prunable_groups


def _producers(name: str, size: int, in_ch: int = 3) -> list[str]:
    groups, reason = find_prunable_groups(build_model(name, 10, in_ch, (size, size)))
    assert reason is None
    return [g.producer for g in groups]


def _resnet_cifar(blocks: int) -> list[str]:
    return [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(blocks)]


@pytest.mark.parametrize("name,blocks", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_cifar_resnets_prune_the_first_conv_of_every_block(name, blocks):
    assert _producers(name, 32) == _resnet_cifar(blocks)


def test_resnet18_prunes_the_first_conv_of_every_block():
    assert _producers("resnet18", 64) == [f"layer{s}.{b}.conv1" for s in (1, 2, 3, 4) for b in (0, 1)]


def test_resnet50_prunes_conv1_and_conv2_of_every_bottleneck():
    expected = [f"layer{s}.{b}.conv{c}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for b in range(n) for c in (1, 2)]
    assert _producers("resnet50", 64) == expected


def test_mobilenetv2_prunes_expansions_through_their_depthwise_conv():
    groups, _ = find_prunable_groups(build_model("mobilenetv2", 10, 3, (32, 32)))
    by_producer = {g.producer: g for g in groups}
    for n in range(2, 18):
        g = by_producer[f"features.{n}.conv.0.0"]  # expansion (torchvision's names)
        assert g.passthrough == [f"features.{n}.conv.1.0"] and g.consumer == f"features.{n}.conv.2"
    # Besides the expansions, the rule also admits the stem (its output feeds block 1 only) and two
    # projections whose block has no residual add: features.1 (32 -> 16 channels) and features.17.
    extra = set(by_producer) - {f"features.{n}.conv.0.0" for n in range(2, 18)}
    assert extra == {"features.0.0", "features.1.conv.1", "features.17.conv.2"}
    depthwise = {"features.1.conv.0.0"} | {f"features.{n}.conv.1.0" for n in range(2, 18)}
    assert not depthwise & set(by_producer)  # a depthwise conv is never a producer


def test_pinned_first_layer_is_not_pruned():
    model = build_model("mobilenetv2", 10, 3, (32, 32))
    space = convert_model(model, torch.randn(2, 3, 32, 32))
    assert "features.0.0" not in {g.producer for g in space.groups}


def test_residual_adds_and_concats_block_pruning():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(8, 4, 1)
            self.d = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.a(x) + x  # residual: a is not prunable
            z = torch.cat([self.b(y), y], 1)  # concat: b is not prunable
            return self.d(torch.relu(self.c(z)))  # c -> relu -> d is

    groups, _ = find_prunable_groups(Net())
    assert [(g.producer, g.consumer) for g in groups] == [("c", "d")]


def test_every_conv_and_linear_is_wrapped_including_grouped_and_depthwise():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.Conv2d(8, 8, 3, groups=8),
        nn.Conv2d(8, 16, 1, groups=2),
        nn.Flatten(),
        nn.LazyLinear(10) if False else nn.Linear(16 * 4 * 4, 10),
    )
    space = convert_model(model, torch.randn(2, 3, 8, 8))
    kinds = [type(m) for _, m in space.layers()]
    assert kinds == [SBSConv2d, SBSConv2d, SBSConv2d, SBSLinear]
    assert space.shapes["1"].is_depthwise and space.shapes["2"].groups == 2
    out = space.model(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
