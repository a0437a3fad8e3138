"""``hwsbs export --format onnx``: a found configuration as an ONNX QDQ model for ONNX Runtime.

The folding, pruning and scales are those of :func:`~hwsbs.export.export_model` (its
:class:`~hwsbs.export.layers.LayerRecord` per layer); this module walks the torch.fx graph of
that export and writes each node with ``onnx.helper`` (``torch.onnx.export`` cannot trace the
integer kernels). Layers become QDQ nodes (:mod:`hwsbs.export.onnx_graph`); batch-norms that
could not be folded, ReLUs, residual adds, pooling and flattening become their ONNX operators.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from hardware_profiles.checked_io import write_atomic
from hwsbs.errors import ConfigError, ModelError

from .layers import ExportedLayer, LayerRecord
from .model import ExportedModel, export_model
from .onnx_carriers import Carrier, calibration_ranges, is_layout, plan_carriers
from .onnx_graph import IR_VERSION, OPSET, GraphBuilder, activate, emit_layer
from .source import ModelSpec

__all__ = ["OnnxExport", "export_onnx", "onnx_from_export"]

_ADD = {operator.add, torch.add}
_RELU = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
_FLATTEN = {torch.flatten}
_POOL = {F.adaptive_avg_pool2d}


@dataclass
class OnnxExport:
    """An ONNX model (``onnx.ModelProto``) of an export, with the layer records it was built from."""

    model: Any
    records: list[LayerRecord]
    spec: ModelSpec | None = None

    def to_bytes(self) -> bytes:
        """The serialised model."""
        return cast(bytes, self.model.SerializeToString())

    def layer_table(self) -> list[dict[str, Any]]:
        """One row per layer: bits, kept channels and how ONNX Runtime runs it."""
        rows = []
        for r in self.records:
            qdq = r.w_bits <= 8 and r.quantised_input and r.a_bits <= 8
            reason = "" if qdq else "wider than 8 bits"
            if qdq and r.w_bits == 8:
                reason = "8-bit weights rounded onto int8"
            rows.append(
                {
                    "name": r.name,
                    "kind": r.kind,
                    "w_bits": r.w_bits,
                    "a_bits": r.a_bits,
                    "in": r.in_channels,
                    "out": r.out_channels,
                    "path": "int8" if qdq else "float",
                    "kernel": "onnx qdq (u8 x s8)",
                    "reason": reason,
                    "weight_dtype": "int8" if r.w_bits <= 8 else "float32",
                    "folded_norm": r.folded_norm,
                    "fused": None,
                }
            )
        return rows

    def save(self, path: str | Path) -> Path:
        """Write the ``.onnx`` file atomically."""
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot write the ONNX model ({exc.strerror or exc})") from None
        data = self.to_bytes()
        return write_atomic(p, lambda fh: fh.write(data), "the ONNX model", ConfigError)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, ExportedLayer) or super().is_leaf_module(m, module_qualified_name)


def _input_shapes(exported: ExportedModel, example: Tensor) -> dict[str, tuple[int, ...]]:
    """Each exported layer's input shape on ``example`` (for border terms and ranks)."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, layer in exported.layers().items():

        def pre(mod: nn.Module, inputs: tuple[Tensor, ...], name: str = name) -> None:
            shapes.setdefault(name, tuple(int(d) for d in inputs[0].shape))

        hooks.append(layer.register_forward_pre_hook(pre))
    try:
        with torch.inference_mode():
            exported(example)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _norm(g: GraphBuilder, x: str, bn: nn.BatchNorm2d, hint: str) -> str:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ModelError(f"{hint}: a batch-norm without running statistics has no ONNX export")
    c = int(bn.num_features)
    weight = bn.weight.detach().float().numpy() if bn.affine else np.ones(c, np.float32)
    bias = bn.bias.detach().float().numpy() if bn.affine else np.zeros(c, np.float32)
    inputs = [
        x,
        g.const(f"{hint}.scale", weight),
        g.const(f"{hint}.bias", bias),
        g.const(f"{hint}.mean", bn.running_mean.detach().float().numpy()),
        g.const(f"{hint}.var", bn.running_var.detach().float().numpy()),
    ]
    return g.node("BatchNormalization", inputs, hint, epsilon=float(bn.eps))


def _pool(g: GraphBuilder, x: str, mod: nn.Module, hint: str) -> str:
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        size = mod.output_size
        if size not in (1, (1, 1), [1, 1]):
            raise ModelError(f"{hint}: AdaptiveAvgPool2d to {size} has no ONNX export (global pooling only)")
        return g.node("GlobalAveragePool", [x], hint)
    pool = cast(Any, mod)  # an AvgPool2d or MaxPool2d (checked by the caller)
    pair = nn.modules.utils._pair
    kernel, stride, pad = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.padding)
    attrs: dict[str, Any] = dict(
        kernel_shape=list(kernel),
        strides=list(stride),
        pads=[pad[0], pad[1], pad[0], pad[1]],
        ceil_mode=int(pool.ceil_mode),
    )
    if isinstance(mod, nn.MaxPool2d):
        return g.node("MaxPool", [x], hint, dilations=list(pair(pool.dilation)), **attrs)
    return g.node("AveragePool", [x], hint, count_include_pad=int(pool.count_include_pad), **attrs)


def _flatten(g: GraphBuilder, x: str, node: fx.Node, hint: str) -> str:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if end != -1:
        raise ModelError(f"{hint}: flatten(end_dim={end}) has no ONNX export (end_dim=-1 only)")
    return g.node("Flatten", [x], hint, axis=int(cast(int, start)))


def _quantises(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s only reader is a layer that quantises it to <= 8 bits (a fusable edge)."""
    if len(node.users) != 1:
        return False
    user = next(iter(node.users))
    mod = modules.get(str(user.target)) if user.op == "call_module" else None
    return isinstance(mod, ExportedLayer) and mod.record.quantised_input and mod.record.a_bits <= 8


@dataclass
class _Options:
    shapes: dict[str, tuple[int, ...]]  # each layer's input shape
    exact_8bit_weights: bool
    carriers: dict[str, Carrier] | None = None  # integer edges (None: float between layers)


def _emit_carrier(g: GraphBuilder, y: str, carrier: Carrier, hint: str) -> str:
    """``y`` through ``QuantizeLinear -> DequantizeLinear`` at ``carrier`` (uint8)."""
    s, zp = g.scalar("scale", carrier.scale), g.scalar("zp_u8", carrier.zero_point, np.uint8)
    dq = g.node("DequantizeLinear", [g.node("QuantizeLinear", [y, s, zp], f"{hint}.out_q"), s, zp], f"{hint}.out_dq")
    if carrier.read_as_is and carrier.grid is not None:  # the reader's own grid: it reads dq as is
        g.remember(("q", dq, carrier.grid[0], 8, False), dq)
    return dq


def _carry_through(g: GraphBuilder, carried: dict[str, Carrier], src: str, out: str) -> None:
    """A layout-only node (Flatten) of a carrier value: the reader of ``out`` reads it as is too."""
    carrier = carried[src]
    if out != src and carrier.read_as_is and carrier.grid is not None:
        carried[out] = carrier
        g.remember(("q", out, carrier.grid[0], 8, False), out)


def _emit_module(g: GraphBuilder, x: str, node: fx.Node, modules: dict[str, nn.Module], options: _Options) -> str:
    hint = str(node.target)
    mod = modules[hint]
    if isinstance(mod, ExportedLayer):
        r = mod.record
        fusable = node.name in options.carriers if options.carriers is not None else _quantises(node, modules)
        return emit_layer(g, x, r, options.shapes[r.name], mod.activation, options.exact_8bit_weights, fusable)
    if isinstance(mod, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(mod, nn.BatchNorm2d):
        return _norm(g, x, mod, hint)
    if isinstance(mod, nn.ReLU6) or (isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0)):
        return activate(g, x, "relu6", hint)
    if isinstance(mod, nn.ReLU):
        return activate(g, x, "relu", hint)
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)):
        return _pool(g, x, mod, hint)
    if isinstance(mod, nn.Flatten):
        if mod.end_dim != -1:
            raise ModelError(f"{hint}: Flatten(end_dim={mod.end_dim}) has no ONNX export")
        return g.node("Flatten", [x], hint, axis=int(mod.start_dim))
    raise ModelError(f"module {hint} ({type(mod).__name__}) has no ONNX export")


def _emit(g: GraphBuilder, node: fx.Node, env: dict[str, str], modules: dict[str, nn.Module], options: _Options) -> str:
    def arg(i: int) -> str:
        a = node.args[i]
        if not isinstance(a, fx.Node):
            raise ModelError(f"{node.name}: argument {i} is a constant ({a!r}); only tensor operands are exported")
        return env[a.name]

    if node.op == "call_module":
        return _emit_module(g, arg(0), node, modules, options)
    target = node.target
    if node.op == "call_function" and target in _ADD and len(node.args) == 2 and not node.kwargs:
        return g.node("Add", [arg(0), arg(1)], node.name)
    if node.op == "call_function" and target in _RELU:
        return activate(g, arg(0), _RELU[target], node.name)
    if node.op == "call_method" and target in ("relu", "relu_"):
        return activate(g, arg(0), "relu", node.name)
    if (node.op == "call_function" and target in _FLATTEN) or (node.op == "call_method" and target == "flatten"):
        return _flatten(g, arg(0), node, node.name)
    if node.op == "call_function" and target in _POOL and node.args[1:] in ((1,), ((1, 1),)):
        return g.node("GlobalAveragePool", [arg(0)], node.name)
    what = getattr(target, "__name__", str(target))
    raise ModelError(f"operation {node.name} ({node.op} {what}) has no ONNX export")


def _calibration(exported: ExportedModel, graph: fx.Graph, example: Tensor, calibration: Tensor | None) -> dict:
    """Value ranges for the calibrated carriers: ``calibration``, else ``example`` plus 64 normal samples."""
    if calibration is None:
        gen = torch.Generator().manual_seed(0)
        calibration = torch.cat([example, torch.randn(64, *example.shape[1:], generator=gen)])
    x = calibration.to(torch.float32)
    if x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return calibration_ranges(fx.GraphModule(exported.net, graph), x)


def onnx_from_export(
    exported: ExportedModel,
    example: Tensor,
    spec: ModelSpec | None = None,
    *,
    exact_8bit_weights: bool = True,
    integer_edges: bool = False,
    calibration: Tensor | None = None,
) -> OnnxExport:
    """Build the ONNX model of an :class:`ExportedModel` (input shape from ``example``, batch free).

    ``exact_8bit_weights=False`` rounds 8-bit weights onto int8 (see
    :func:`~hwsbs.export.onnx_graph.emit_layer`): faster in ONNX Runtime, not exact.
    ``integer_edges`` puts every value between layers on a uint8 grid (residual adds and pooling
    included, :mod:`~hwsbs.export.onnx_carriers`), so ONNX Runtime runs the model as one chain of
    integer kernels; ``calibration`` inputs set the grids no layer quantiser defines (default:
    ``example`` plus 64 normal samples). False keeps those values float (exact, slower).

    Raises:
        ConfigError: onnx is not installed.
        ModelError: an operation without an ONNX mapping, or a model torch.fx cannot trace.
    """
    mixed = next((r.name for r in exported.records if r.parts), None)
    if mixed is not None:  # one sub-layer per width: no ONNX mapping yet (the torch export runs it)
        raise ModelError(f"layer {mixed} has channel-wise weight bits, not mapped to ONNX; export it with export_model")
    g = GraphBuilder()
    onnx = g.onnx
    try:
        graph = _Tracer().trace(exported.net)
    except Exception as exc:  # untraceable control flow: no graph to write
        raise ModelError(f"torch.fx cannot trace the model for ONNX export: {str(exc).splitlines()[0][:160]}") from None
    modules = dict(exported.net.named_modules())
    options = _Options(_input_shapes(exported, example), exact_8bit_weights)
    if integer_edges:
        ranges = _calibration(exported, graph, example, calibration)
        options.carriers = plan_carriers(graph, modules, ranges)
    with torch.inference_mode():
        out_shape = tuple(exported(example[:1]).shape)
    env: dict[str, str] = {}
    carried: dict[str, Carrier] = {}  # dequantised carrier values (and layout ops of them)
    out_name: str | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if env:
                raise ModelError(f"the model takes more than one input ({node.name}); ONNX export takes one")
            env[node.name] = "input"
        elif node.op == "output":
            result = node.args[0]
            if not isinstance(result, fx.Node):
                raise ModelError("the model returns a tuple or a constant; ONNX export needs one output tensor")
            out_name = env[result.name]
        else:
            env[node.name] = _emit(g, node, env, modules, options)
            carrier = (options.carriers or {}).get(node.name)
            if carrier is not None:
                env[node.name] = _emit_carrier(g, env[node.name], carrier, node.name)
                carried[env[node.name]] = carrier
            elif is_layout(node, modules) and isinstance(node.args[0], fx.Node) and env[node.args[0].name] in carried:
                _carry_through(g, carried, env[node.args[0].name], env[node.name])
    assert out_name is not None  # every traced graph ends in an output node
    final = g.node("Identity", [out_name], "logits")
    tensor = onnx.TensorProto.FLOAT
    x_info = onnx.helper.make_tensor_value_info("input", tensor, ["batch", *example.shape[1:]])
    y_info = onnx.helper.make_tensor_value_info(final, tensor, ["batch", *out_shape[1:]])
    gp = onnx.helper.make_graph(g.nodes, "hwsbs", [x_info], [y_info], g.initializers)
    model = onnx.helper.make_model(
        gp, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="hwsbs", ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return OnnxExport(model, list(exported.records), spec)


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    example: Tensor,
    *,
    spec: ModelSpec | None = None,
    fold_norms: bool = True,
    exact_8bit_weights: bool = True,
    integer_edges: bool = False,
    calibration: Tensor | None = None,
) -> OnnxExport:
    """A fixed, physically pruned SBS model (``apply_config``) as an ONNX QDQ model.

    Args:
        model: the configured SBS model (not modified).
        example: an input batch: one forward reads the clips; its shape (batch free) is the graph's.
        spec: the model spec, kept with the result.
        fold_norms: fold batch-norms that directly follow a convolution.
        exact_8bit_weights: keep 8-bit weights exact (int8 codes plus a rank-1 term); False
            rounds them onto int8, which ONNX Runtime fuses into its integer kernels.
        integer_edges: uint8 values between layers (residual adds, pooling; see
            :func:`onnx_from_export`), so ONNX Runtime fuses the whole chain (not exact around
            float residuals); False (default): float edges, exact.
        calibration: inputs that set the grids of values no layer quantiser reads.

    Raises:
        ConfigError: onnx is not installed.
        ModelError: a layer in search mode, an attention product or weight-only layer, or an
            operation without an ONNX mapping.
    """
    GraphBuilder()  # fail on a missing onnx before the export's work
    exported = export_model(model, example, backend="float", spec=spec, fold_norms=fold_norms)
    return onnx_from_export(
        exported,
        example,
        spec,
        exact_8bit_weights=exact_8bit_weights,
        integer_edges=integer_edges,
        calibration=calibration,
    )
