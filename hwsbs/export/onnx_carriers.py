"""Integer edges between layers: which uint8 grid each value of an ONNX export travels on.

ONNX Runtime fuses ``DQ -> Conv/Gemm/Add/Pool -> Q`` into ``QLinearConv``/``QLinearAdd``/... only
when every input comes from a ``DequantizeLinear`` and the output goes to a ``QuantizeLinear``.
So every value between layers gets a *carrier*: ``QuantizeLinear -> DequantizeLinear`` at a
uint8 grid right after its producer. The grid is chosen so the search model's own quantisers are
reproduced where they exist:

* A value read (directly or through Flatten/Identity) by an unsigned ``k <= 8``-bit layer
  quantiser with clip ``v`` travels on ``v / (L m)``, ``L = 2^k - 1`` and ``m`` the largest odd
  whole number with ``L m <= 255``: for 8 bits that *is* the layer's grid (the layer reads it as
  is); below 8 bits the layer requantises ``round(j / m)``, which for odd ``m`` equals direct
  rounding (no double-rounding error). Other readers of the value (a residual add) see it
  rounded to that grid and clipped at ``>= v`` (the search model's residual is float: the one
  approximation here).
* A value read by no layer quantiser (a residual add's operands, the input of global pooling)
  travels on an 8-bit affine grid over its range on calibration inputs, widened by
  :data:`CALIBRATION_MARGIN` (zero point 0 when the range is non-negative).
* Values read only by an activation, by signed or wider layers, or the graph output stay float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx, nn

from .encoding import MAX_INT_BITS
from .layers import ExportedLayer

__all__ = ["CALIBRATION_MARGIN", "Carrier", "is_layout", "plan_carriers", "calibration_ranges"]

#: Calibrated ranges are widened by this factor (inputs beyond the calibration set saturate later).
CALIBRATION_MARGIN = 1.05
_ACTIVATION_TARGETS = {"relu", "relu_", "relu6"}


@dataclass(frozen=True)
class Carrier:
    """A uint8 grid ``x = scale * (q - zero_point)``; ``grid`` names the layer quantiser it refines."""

    scale: float
    zero_point: int
    grid: tuple[float, int] | None = None  # (clip, bits) of the reader it refines, if any
    stretch: int = 1  # the reader's step is ``stretch`` carrier steps

    @property
    def read_as_is(self) -> bool:
        """Whether the reader it was made for reads the carrier without requantising (8 bits)."""
        return self.grid is not None and self.grid[1] == MAX_INT_BITS and self.stretch == 1 and self.zero_point == 0


def is_layout(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` only moves values (Identity, Dropout, Flatten): its readers are its input's."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.Identity, nn.Dropout, nn.Flatten))
    if node.op == "call_method":
        return node.target == "flatten"
    return node.op == "call_function" and node.target is torch.flatten


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.ReLU, nn.ReLU6, nn.Hardtanh))
    name = getattr(node.target, "__name__", str(node.target))
    return node.op in ("call_function", "call_method") and name in _ACTIVATION_TARGETS


def _readers(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """The nodes reading ``node``'s value, looking through layout-only nodes."""
    out: list[fx.Node] = []
    for user in node.users:
        out += _readers(user, modules) if is_layout(user, modules) else [user]
    return out


def _reader_grid(user: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, int] | None:
    """(clip, bits) of an unsigned integer input quantiser reading the value, else None."""
    mod = modules.get(str(user.target)) if user.op == "call_module" else None
    if not isinstance(mod, ExportedLayer):
        return None
    r = mod.record
    if not r.quantised_input or r.a_bits > MAX_INT_BITS or r.act_signed:
        return None
    return float(r.act_clip), int(r.a_bits)


def _grid_carrier(clip: float, bits: int) -> Carrier:
    levels = 2**bits - 1
    m = 255 // levels
    m -= 1 - m % 2  # odd: requantising round(j / m) then equals direct rounding
    return Carrier(_scale(clip, levels, m), 0, (float(clip), bits), m)


def _scale(clip: float, levels: int, m: int) -> float:
    """``clip / (levels m)``, in float32 as the layer's own quantiser computes it for m = 1."""
    return float(np.float32(clip) / np.float32(levels)) / m


def _calibrated(lo: float, hi: float) -> Carrier:
    lo, hi = min(lo, 0.0) * CALIBRATION_MARGIN, max(hi, 0.0) * CALIBRATION_MARGIN
    if hi - lo <= 0:
        return Carrier(1.0, 0)
    scale = (hi - lo) / 255.0
    return Carrier(scale, int(np.clip(round(-lo / scale), 0, 255)))


def _covering(grids: list[tuple[float, int]], lo: float, hi: float) -> Carrier:
    """A carrier covering the calibrated range that refines the coarsest reader grid it can (an
    odd whole ``m`` with ``255 v / (L m) >= span``: that reader requantises exactly); else the
    plain calibrated grid (readers requantise with double rounding, <= one 8-bit step)."""
    lo, hi = min(lo, 0.0) * CALIBRATION_MARGIN, max(hi, 0.0) * CALIBRATION_MARGIN
    for clip, bits in sorted(grids, key=lambda g: g[1]):
        levels = 2**bits - 1
        m = int(255 * clip / (levels * (hi - lo))) if hi > lo else 0
        m -= 1 - m % 2
        if m >= 1:
            scale = _scale(clip, levels, m)
            return Carrier(scale, int(np.clip(np.ceil(-lo / scale), 0, 255)), (float(clip), bits), m)
    return _calibrated(lo / CALIBRATION_MARGIN, hi / CALIBRATION_MARGIN)


def _value_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Nodes whose output is a fresh value that may get a carrier (not layout or placeholders)."""
    return node.op in ("call_module", "call_function", "call_method") and not is_layout(node, modules)


def plan_carriers(
    graph: fx.Graph, modules: dict[str, nn.Module], ranges: dict[str, tuple[float, float]]
) -> dict[str, Carrier]:
    """The carrier of every value (by fx node name) that gets one (see the module docstring)."""
    plan: dict[str, Carrier] = {}
    for node in graph.nodes:
        if not _value_node(node, modules):
            continue
        readers = _readers(node, modules)
        if not readers or any(u.op == "output" or _is_activation(u, modules) for u in readers):
            continue
        grids = [g for g in (_reader_grid(u, modules) for u in readers) if g is not None]
        if len(grids) == len(readers):
            plan[node.name] = _grid_carrier(*max(grids, key=lambda g: (g[1], g[0])))
            continue
        layers = [u for u in readers if u.op == "call_module" and isinstance(modules.get(str(u.target)), ExportedLayer)]
        if len(layers) == len(readers) or node.name not in ranges:
            continue  # signed / wider layers quantise float values themselves
        plan[node.name] = _covering(grids, *ranges[node.name])
    return plan


@torch.inference_mode()
def calibration_ranges(gm: fx.GraphModule, inputs: Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) of every node's tensor value over ``inputs`` (one run of ``gm``)."""
    ranges: dict[str, tuple[float, float]] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            value = super().run_node(n)
            if isinstance(value, Tensor) and value.is_floating_point() and value.numel():
                ranges[n.name] = (float(value.min()), float(value.max()))
            return value

    _Recorder(gm).run(inputs)
    return ranges
