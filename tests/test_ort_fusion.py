"""Integer edges (``export_onnx(integer_edges=True)``): ONNX Runtime fuses a resnet20 export into
one chain of integer kernels (QLinearConv / QLinearAdd / QLinearGlobalAveragePool, no float Add
between quantised convolutions), and the model stays within a stated tolerance of the search model."""

from __future__ import annotations

import collections

import pytest
import torch

from hwsbs.export import ModelSpec, compressed_model, export_onnx
from hwsbs.export.onnx_carriers import Carrier, _covering, _grid_carrier
from hwsbs.export.verify import INTEGER_EDGES_REL_TOL as INTEGER_EDGE_TOL
from hwsbs.export.verify import MIN_ARGMAX_AGREEMENT
from hwsbs.lut.configs import uniform_config
from hwsbs.sbs.convert import convert_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RESNET = ModelSpec("resnet20", 10, 3, (32, 32))


def _optimized_ops(model_bytes: bytes, tmp_path) -> collections.Counter:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)


@pytest.fixture(scope="module")
def int8_resnet():
    torch.manual_seed(0)
    space = convert_model(RESNET.build(), RESNET.example(), (2, 4, 8), prune=True)
    return compressed_model(RESNET, uniform_config(space, 8))


def test_resnet20_integer_edges_fuse_into_integer_kernels(int8_resnet, tmp_path):
    exported = export_onnx(int8_resnet, RESNET.example(4), exact_8bit_weights=False, integer_edges=True)
    ops = _optimized_ops(exported.to_bytes(), tmp_path)
    assert ops["QLinearConv"] >= 20 and ops["QLinearAdd"] == 9, ops  # every conv but the signed stem
    assert ops["QLinearGlobalAveragePool"] == 1
    # The float Adds left are the stem's input shift and border term: none between quantised convs.
    assert ops["Add"] <= 2 and ops["Conv"] <= 1 and ops["Relu"] == 0, ops
    floats = _optimized_ops(export_onnx(int8_resnet, RESNET.example(4), exact_8bit_weights=False).to_bytes(), tmp_path)
    assert floats["QLinearAdd"] == 0 and floats["Add"] >= 9  # float edges: the adds stay float


def test_scales_are_scalars_so_adds_fuse(int8_resnet):
    exported = export_onnx(int8_resnet, RESNET.example(2), integer_edges=True)
    inits = {i.name: i for i in exported.model.graph.initializer}
    for node in exported.model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1].startswith("scale"):
            assert list(inits[node.input[1]].dims) == []  # 0-d: ORT's QLinearAdd fusion needs it


def test_integer_edges_agree_within_the_stated_tolerance(int8_resnet):
    from hwsbs.export.onnx_run import ort_session
    from hwsbs.export.verify import verify_onnx

    exported = export_onnx(int8_resnet, RESNET.example(4), integer_edges=True)
    stats = verify_onnx(int8_resnet, ort_session(exported.to_bytes(), 1), [RESNET.example(64, seed=5)])
    assert stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT and stats["median_rel"] <= INTEGER_EDGE_TOL, stats


def test_carriers_refine_the_reader_grid_with_an_odd_stretch():
    c8 = _grid_carrier(2.0, 8)
    assert c8.stretch == 1 and c8.read_as_is and c8.zero_point == 0
    c2 = _grid_carrier(2.0, 2)  # 255 // 3 = 85, odd: requantising round(j / 85) is exact
    assert c2.stretch == 85 and not c2.read_as_is
    c4 = _grid_carrier(2.0, 4)  # 255 // 15 = 17
    assert c4.stretch == 17
    wide = _covering([(1.0, 2)], -0.5, 3.0)  # a residual wider than the reader's clip
    assert wide.stretch % 2 == 1 and wide.zero_point > 0 and 255 * wide.scale >= 3.5
    plain = _covering([(1.0, 8)], 0.0, 3.0)  # no refinement of an 8-bit grid covers 3x its clip
    assert isinstance(plain, Carrier) and plain.grid is None
