"""Search, derive and physically prune on real architectures (synthetic tensors, a few steps)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cost_models import build_cost_model
from hwsbs.models import build_model
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import apply_config, derive_config
from hwsbs.sbs.engine import CostObjective, SearchEngine


def _narrow_mobilenetv2() -> nn.Module:
    from hwsbs.models.mobilenetv2 import MobileNetV2

    return MobileNetV2(num_classes=10, in_channels=3, small_input=True, width_mult=0.25)


@pytest.mark.parametrize("name,size,bits", [("resnet20", 16, (2, 4, 8)), ("mobilenetv2", 16, (1, 2, 4, 8))])
def test_search_then_prune_physically(name, size, bits):
    torch.manual_seed(0)
    # a quarter-width MobileNetV2 has the same structure (expand -> depthwise -> project) at a
    # fraction of the cost: the default test run stays fast
    model = _narrow_mobilenetv2() if name == "mobilenetv2" else build_model(name, 10, 3, (size, size))
    x = torch.randn(8, 3, size, size)
    y = torch.randint(0, 10, (8,))
    space = convert_model(model, x, bits, max_prune_fraction=0.5)
    engine = SearchEngine(
        space, [CostObjective(build_cost_model("bops"))], lam=50.0, weight_lr=0.01, threshold_lr=0.5, weight_decay=0.0
    )
    for _ in range(6):
        stats = engine.step(x, y)
    assert stats["cost"] > 0
    config = derive_config(space, bits=list(bits))
    assert all(d.w_bits in bits or d.w_bits == 8 for d in config.layers)
    pruned_layers = [d for d in config.layers if d.pruned_channels]
    assert pruned_layers, "a strong lambda should prune some groups"
    compressed = apply_config(space, config)
    modules = dict(compressed.named_modules())
    for d in config.layers:
        m = modules[d.shape.name]
        out_ch = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        assert out_ch == d.kept_out, d.shape.name
        if isinstance(m, nn.Conv2d) and d.shape.is_depthwise:
            assert m.groups == d.kept_out  # depthwise convs lose the producer's channels
    compressed.eval()
    assert compressed(x).shape == (8, 10)
