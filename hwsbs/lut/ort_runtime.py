"""ONNX Runtime as a measured runtime: single-layer QDQ graphs, timed like the torch layers.

Each layer is written exactly as ``hwsbs export --format onnx`` writes it inside a model whose
next layer quantises its output (int32 bias, so ONNX Runtime fuses ``DQ -> Conv -> Q`` into
``QLinearConv``), with uint8 codes as the graph input and output: inside a model the input's
QuantizeLinear is fused into the previous layer, so the table times the kernel, not the glue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hwsbs.errors import ModelError
from hwsbs.export.model import ExportedModel
from hwsbs.export.onnx_graph import IR_VERSION, OPSET, GraphBuilder, emit_layer
from hwsbs.export.onnx_run import ort_session, require_onnxruntime

__all__ = ["RUNTIMES", "ORT_PAIRS", "ORT_ROUNDED_PAIRS", "runtime_version", "layer_model", "ort_layer_call"]

#: Runtimes ``hwsbs lut build/check --runtime`` measure with.
RUNTIMES = ("torch", "onnxruntime")
#: (w_bits, a_bits, what runs them) measured through ONNX Runtime: exact 8-bit weights carry a
#: rank-1 term (a second node), narrower weights fuse into one integer kernel, 32/32 is float32;
#: every other pair runs on the next wider of these (the table's fallback next_wider).
ORT_PAIRS = [
    (8, 8, "int8 QDQ with the exact 8-bit weight term (onnxruntime)"),
    (7, 8, "int8 QDQ fused into QLinearConv/QGemm (onnxruntime)"),
    (32, 32, "float32 (onnxruntime)"),
]
#: The same with 8-bit weights rounded onto int8 (``export --round-8bit-weights``, the fast deploy
#: path): every width runs the one fused integer kernel, so only pruning changes a layer's time.
ORT_ROUNDED_PAIRS = [
    (8, 8, "int8 QDQ fused into QLinearConv/QGemm, 8-bit weights rounded onto int8 (onnxruntime)"),
    (32, 32, "float32 (onnxruntime)"),
]


def runtime_version(runtime: str) -> str:
    """``torch X`` or ``onnxruntime X`` (ConfigError when onnxruntime is missing)."""
    if runtime == "onnxruntime":
        return f"onnxruntime {require_onnxruntime('--runtime onnxruntime').__version__}"
    return f"torch {torch.__version__}"


def _strip_input_quantiser(g: GraphBuilder, onnx: Any) -> tuple[str, int]:
    """Drop the nodes from the graph input to its first QuantizeLinear (the previous layer's job
    in a model): (new input name, its element type)."""
    chain, current = [], "input"
    for node in g.nodes:
        if current in node.input:
            chain.append(node)
            if node.op_type == "QuantizeLinear":
                for n in chain:
                    g.nodes.remove(n)
                return node.output[0], onnx.TensorProto.UINT8
            current = node.output[0]
    return "input", onnx.TensorProto.FLOAT


def layer_model(exported: ExportedModel, in_shape: tuple[int, ...], exact_8bit_weights: bool = True) -> Any:
    """The ONNX model of the one layer of ``exported`` (an export of ``nn.Sequential(layer)``)."""
    (name, layer), *_ = exported.layers().items()
    g = GraphBuilder()
    onnx = g.onnx
    y = emit_layer(g, "input", layer.record, in_shape, layer.activation, exact_8bit_weights, int_bias=True)
    x_name, x_type = _strip_input_quantiser(g, onnx)
    y_type = onnx.TensorProto.FLOAT
    if x_type == onnx.TensorProto.UINT8:  # the next layer's quantiser, fused into this kernel
        y = g.node("QuantizeLinear", [y, g.scalar("out_scale", 0.05), g.scalar("zp_u8", 0, np.uint8)], "codes")
        y_type = onnx.TensorProto.UINT8
    x_info = onnx.helper.make_tensor_value_info(x_name, x_type, list(in_shape))
    y_info = onnx.helper.make_tensor_value_info(y, y_type, None)
    graph = onnx.helper.make_graph(g.nodes, name, [x_info], [y_info], g.initializers)
    return onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="hwsbs", ir_version=IR_VERSION
    )


def ort_layer_call(
    kind: str,
    exported: nn.Module,
    in_shape: tuple[int, ...],
    threads: int,
    seed: int = 0,
    exact_8bit_weights: bool = True,
) -> Callable[[], object]:
    """A no-argument call running the layer's graph once on a fixed random input (8-bit weights
    exact, or rounded onto int8 as ``export --round-8bit-weights`` runs them).

    Raises:
        ModelError: an attention product (no ONNX export).
        ConfigError: onnx or onnxruntime is not installed.
    """
    if kind == "matmul" or not isinstance(exported, ExportedModel):
        raise ModelError("attention products (matmul layers) have no ONNX export: measure them with --runtime torch")
    model = layer_model(exported, in_shape, exact_8bit_weights)
    session = ort_session(model.SerializeToString(), threads)
    inp = session.get_inputs()[0]
    rng = np.random.default_rng(seed)
    if inp.type == "tensor(uint8)":
        levels = 2 ** exported.records[0].a_bits - 1
        feed = rng.integers(0, levels + 1, size=in_shape, dtype=np.uint8)
    else:
        feed = rng.standard_normal(in_shape).astype(np.float32)
    inputs = {inp.name: feed}
    return lambda: session.run(None, inputs)
