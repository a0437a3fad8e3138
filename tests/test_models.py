"""Built-in models: forward pass, fx-traceability, sizes, module naming; user factories."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from hwsbs.errors import ModelError
from hwsbs.models import build_model, list_models

# name -> (num_classes, input side, parameter range); reference counts in the comments.
CASES = {
    "resnet20": (10, 32, (270_000, 280_000)),  # 269,722 with option-A shortcuts; B adds 2,752
    "resnet32": (10, 32, (460_000, 475_000)),
    "resnet56": (10, 32, (850_000, 870_000)),  # 853,018 with option A
    "mobilenetv2": (10, 32, (2_200_000, 2_300_000)),
    "resnet18": (10, 64, (11_100_000, 11_300_000)),
    "resnet50": (10, 64, (23_400_000, 23_600_000)),
}

_BN = (nn.BatchNorm2d,)
_ACTS = {F.relu, F.relu6, torch.relu}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: Transformers, tested in test_text_models.py and test_transformers.py (no BatchNorm to check here).
TRANSFORMERS = {"vit_tiny", "gpt_tiny"}


def test_all_builtins_listed() -> None:
    assert set(CASES) | {"small_cnn"} | TRANSFORMERS == set(list_models())


@pytest.mark.parametrize("name", sorted(CASES))
def test_builds_runs_and_traces(name: str) -> None:
    num_classes, side, (lo, hi) = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, in_channels=3, image_size=(side, side)).eval()
    assert lo <= _params(model) <= hi
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = model(x)
        traced = fx.symbolic_trace(model)
        assert out.shape == (2, num_classes) and torch.isfinite(out).all()
        assert torch.allclose(traced(x), out, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_conv_feeds_exactly_one_batchnorm(name: str) -> None:
    num_classes, side, _ = CASES[name]
    model = build_model(name, num_classes, 3, (side, side))
    graph = fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    convs = [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)]
    assert convs
    for node in convs:
        users = list(node.users)
        assert len(users) == 1 and isinstance(modules.get(users[0].target), _BN), node.target
        assert modules[node.target].bias is None  # BN supplies the bias


def _reaches_one_conv(graph: fx.Graph, modules: dict[str, nn.Module], target: str) -> str | None:
    """The single conv that ``target``'s output reaches through BN and activations only, else None."""
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == target)
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        if node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d):
            return node.target
        is_bn = node.op == "call_module" and isinstance(modules[node.target], _BN)
        if not (is_bn or (node.op == "call_function" and node.target in _ACTS)):
            return None


def _resnet_blocks(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n.count(".") == 1 and n.startswith("layer")]


@pytest.mark.parametrize(
    ("name", "blocks", "side", "pairs"),
    [
        ("resnet20", 9, 32, [("conv1", "conv2")]),
        ("resnet56", 27, 32, [("conv1", "conv2")]),
        ("resnet18", 8, 64, [("conv1", "conv2")]),
        ("resnet50", 16, 64, [("conv1", "conv2"), ("conv2", "conv3")]),
    ],
)
def test_resnet_naming_and_prunable_producers(name: str, blocks: int, side: int, pairs: list[tuple[str, str]]) -> None:
    model = build_model(name, 10, 3, (side, side))
    modules = dict(model.named_modules())
    graph = fx.symbolic_trace(model).graph
    names = _resnet_blocks(model)
    assert len(names) == blocks
    for block in names:
        for producer, consumer in pairs:
            assert _reaches_one_conv(graph, modules, f"{block}.{producer}") == f"{block}.{consumer}"
        last = "conv3" if name == "resnet50" else "conv2"
        assert _reaches_one_conv(graph, modules, f"{block}.{last}") is None  # feeds the residual add
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == blocks
    short = "shortcut" if name in ("resnet20", "resnet56") else "downsample"  # ImageNet: torchvision's name
    down = modules[f"layer2.0.{short}.0"]
    assert isinstance(down, nn.Conv2d) and down.kernel_size == (1, 1) and down.stride == (2, 2)
    assert isinstance(modules[f"layer2.0.{short}.1"], nn.BatchNorm2d)
    identity = modules.get(f"layer2.1.{short}")  # CIFAR: an empty Sequential; torchvision: None
    assert identity is None or len(list(identity.children())) == 0


def test_mobilenetv2_naming_and_prunable_producers() -> None:
    model = build_model("mobilenetv2", 10, 3, (32, 32))
    modules = dict(model.named_modules())
    graph = fx.symbolic_trace(model).graph
    # torchvision's names: features.N.conv = [expand (conv.0.0)], depthwise (conv.1.0), project (conv.2), BN
    assert len(modules["features.1.conv"]) == 3 and modules["features.1.conv.0.0"].groups == 32  # no expansion
    expands = [f"features.{i}.conv.0.0" for i in range(2, 18)]
    for name in expands:
        block = name.removesuffix(".0.0")
        dw = modules[f"{block}.1.0"]
        assert isinstance(dw, nn.Conv2d) and dw.groups == dw.in_channels == modules[name].out_channels
        assert _reaches_one_conv(graph, modules, name) == f"{block}.1.0"
        assert _reaches_one_conv(graph, modules, f"{block}.1.0") == f"{block}.2"
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 10  # stride-1 blocks with equal widths: 1 + 2 + 3 + 2 + 2 (24..160 stages)
    assert isinstance(modules["features.0.0"], nn.Conv2d) and isinstance(modules["features.18.0"], nn.Conv2d)


def test_mobilenetv2_stem_depends_on_image_size() -> None:
    small = build_model("mobilenetv2", 10, 3, (32, 32))
    large = build_model("mobilenetv2", 1000, 3, (224, 224))
    assert small.features[0][0].stride == (1, 1) and large.features[0][0].stride == (2, 2)
    assert small.features[2].conv[1][0].stride == (1, 1) and large.features[2].conv[1][0].stride == (2, 2)
    assert _params(large) == 3_504_872  # the reference MobileNetV2 1.0 at 1000 classes
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_imagenet_reference_sizes() -> None:
    assert _params(build_model("resnet18", 1000, 3, (224, 224))) == 11_689_512
    assert _params(build_model("resnet50", 1000, 3, (224, 224))) == 25_557_032


def test_resnets_accept_other_input_channels_and_sizes() -> None:
    with torch.no_grad():
        assert build_model("resnet20", 100, 1, (28, 28)).eval()(torch.randn(2, 1, 28, 28)).shape == (2, 100)
        assert build_model("resnet18", 10, 3, (32, 32)).eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    conv = build_model("resnet56", 10, 3, (32, 32)).layer3[0].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)


def test_model_errors() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet21'; known: .*resnet20"):
        build_model("resnet21", 10, 3, (32, 32))
    with pytest.raises(ModelError, match="image_size"):
        build_model("resnet20", 10, 3, (32, 32, 3))


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_nets.py").write_text(
        "from torch import nn\n"
        "def tiny(num_classes, in_channels, image_size):\n"
        "    h, w = image_size\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes))\n"
        "def not_a_model(num_classes):\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_nets:tiny", num_classes=4, in_channels=1, image_size=(8, 8))
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 4)
    fx.symbolic_trace(model)
    with pytest.raises(ModelError, match="not an nn.Module"):
        build_model("my_nets:not_a_model", 4, 1, (8, 8))
    with pytest.raises(ModelError, match="has no callable 'missing'"):
        build_model("my_nets:missing", 4, 1, (8, 8))
