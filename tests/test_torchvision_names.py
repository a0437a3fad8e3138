"""The built-in resnet18/resnet50/mobilenetv2 have torchvision's state_dict (keys, shapes, dtypes).

The reference lists in ``tests/data/torchvision_keys`` were dumped from torchvision's own
architecture code (see their headers); torchvision itself is not needed here. A state_dict made
from a list loads strictly, and through the ``--checkpoint`` path (a plain ``torch.save`` file read
with ``weights_only=True``), so a torchvision checkpoint can be given to ``hwsbs search``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hwsbs.checkpoint import load_state_dict_file
from hwsbs.errors import CheckpointError
from hwsbs.models import build_model
from hwsbs.pipeline import load_weights_into

KEYS = Path(__file__).parent / "data" / "torchvision_keys"
# built-in name -> torchvision's name (the reference list's file name)
MODELS = {"resnet18": "resnet18", "resnet50": "resnet50", "mobilenetv2": "mobilenet_v2"}


def _reference(name: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """``(key, shape, dtype)`` in state_dict order, from ``KEY SHAPE DTYPE`` lines."""
    entries = []
    for line in (KEYS / f"{MODELS[name]}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split()
        dims = () if shape == "scalar" else tuple(int(s) for s in shape.split(","))
        entries.append((key, dims, getattr(torch, dtype)))
    return entries


def _entries(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def _random_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for every reference entry; scaled so that an eval-mode forward stays finite."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in _reference(name):
        if not dtype.is_floating_point:  # num_batches_tracked
            state[key] = torch.tensor(int(torch.randint(0, 1000, (), generator=gen)), dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            value = torch.randn(shape, generator=gen, dtype=dtype)
            fan_in = value[0].numel() if value.dim() > 1 else 1
            state[key] = value / fan_in**0.5
    return state


def test_reference_lists_are_torchvisions() -> None:
    sizes = {name: len(_reference(name)) for name in MODELS}
    assert sizes == {"resnet18": 122, "resnet50": 320, "mobilenetv2": 314}
    params = {
        name: sum(torch.Size(s).numel() for k, s, d in _reference(name) if d.is_floating_point and ".running_" not in k)
        for name in MODELS
    }
    assert params == {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenetv2": 3_504_872}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_state_dict_matches_torchvision(name: str) -> None:
    assert _entries(build_model(name, 1000, 3, (224, 224))) == _reference(name)


def test_small_input_mobilenetv2_keeps_torchvisions_state_dict() -> None:
    # the CIFAR stem only changes strides, which hold no weights
    assert _entries(build_model("mobilenetv2", 1000, 3, (32, 32))) == _reference("mobilenetv2")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_state_dict_loads_strictly_and_runs(name: str) -> None:
    state = _random_state(name)
    model = build_model(name, 1000, 3, (224, 224))
    model.load_state_dict(state, strict=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 96, 96))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_torchvision_state_dict_file_is_accepted_by_checkpoint(name: str, tmp_path: Path) -> None:
    state = _random_state(name, seed=1)
    path = tmp_path / f"{MODELS[name]}.pth"
    torch.save(state, path)
    loaded = load_state_dict_file(path)  # what hwsbs search --checkpoint reads (weights_only=True)
    model = build_model(name, 1000, 3, (224, 224))
    load_weights_into(model, loaded, f"--checkpoint {path}")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_checkpoint_with_the_old_names_is_refused(tmp_path: Path) -> None:
    state = _random_state("resnet18")
    state = {k.replace(".downsample.", ".shortcut."): v for k, v in state.items()}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_weights_into(build_model("resnet18", 1000, 3, (224, 224)), load_state_dict_file(path), "--checkpoint")
