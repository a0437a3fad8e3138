"""ONNX QDQ export: small_cnn and resnet20 configurations (mixed bits, pruned channels) run in
ONNX Runtime and agree with the search model; bad input is one line / a typed exception."""

from __future__ import annotations

import json
import sys

import pytest

from hwsbs.cli.main import main
from hwsbs.errors import ConfigError, ModelError
from hwsbs.export import ModelSpec, compressed_model, export_onnx
from hwsbs.export.verify import MIN_ARGMAX_AGREEMENT, ONNX_REL_TOL, verify_onnx
from hwsbs.lut.fidelity import draw_configs
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import apply_config
from tests.test_export import TINY_SPEC, _mixed_config, _run_dir, _tiny_configured

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from hwsbs.export.onnx_run import ort_session  # noqa: E402  (needs onnxruntime)

SMALL = ModelSpec("small_cnn", 10, 1, (8, 8))
RESNET = ModelSpec("resnet20", 10, 3, (32, 32))


def _check(model, spec, samples: int = 256, seed: int = 5, **kwargs) -> dict:
    exported = export_onnx(model, spec.example(4), spec=spec, **kwargs)
    onnx.checker.check_model(exported.model)
    session = ort_session(exported.to_bytes(), threads=1)
    stats = verify_onnx(model, session, [spec.example(samples, seed=seed)])
    assert stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT, stats
    assert stats["median_rel"] <= ONNX_REL_TOL and stats["passed"], stats
    return stats


def test_every_path_of_the_tiny_net_is_exact():
    """Signed padded stem (border term), 8-bit weights (rank-1 term), depthwise, 2/2 bits, float head, pruning."""
    model, _ = _tiny_configured()
    stats = _check(model, TINY_SPEC)
    assert stats["median_rel"] < 1e-5


def _pruned_mixed(spec: ModelSpec):
    """The first of some random configurations that prunes channels and mixes bit widths."""
    for config in draw_configs(spec, 20, 0):
        if any(d.kept_out < d.shape.out_channels for d in config.layers):
            if len({(d.w_bits, d.a_bits) for d in config.layers}) > 1:
                return config
    raise AssertionError("no pruned mixed configuration drawn")


def test_small_cnn_mixed_and_pruned_configurations_agree():
    space = convert_model(SMALL.build(), SMALL.example(64), (2, 4, 8))
    bits = {"conv1": (8, 8), "conv2": (4, 4), "conv3": (2, 4), "fc": (32, 32)}
    model = apply_config(space, _mixed_config(space, bits, {"conv2": [4, 5, 6, 7, 20, 21, 22, 23]})).eval()
    _check(model, SMALL)
    _check(compressed_model(SMALL, _pruned_mixed(SMALL)), SMALL)


def test_resnet20_mixed_and_pruned_configuration_agrees():
    model = compressed_model(RESNET, _pruned_mixed(RESNET))
    stats = _check(model, RESNET, samples=128)
    graph_ops = {n.op_type for n in export_onnx(model, RESNET.example(2)).model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add", "Gemm", "GlobalAveragePool"} <= graph_ops
    assert stats["samples"] == 128


def test_pruned_channels_are_removed_and_weights_are_int8():
    model, _ = _tiny_configured()
    exported = export_onnx(model, TINY_SPEC.example(2))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in exported.model.graph.initializer}
    assert inits["expand.w_q"].shape[0] == 12 and str(inits["expand.w_q"].dtype) == "int8"
    assert [r["out"] for r in exported.layer_table()] == [8, 12, 12, 16, 10]


def test_cli_export_onnx_with_verify(tmp_path, capsys):
    run, _ = _run_dir(tmp_path)
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out), "--verify", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnx" and report["verify"]["passed"]
    assert report["verify"]["tolerance_rel"] == ONNX_REL_TOL and out.is_file()
    onnx.checker.check_model(onnx.load(str(out)))


def test_cli_export_onnx_without_onnx_is_one_line(tmp_path, capsys, monkeypatch):
    run, _ = _run_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the onnx package" in err and "[deploy]" in err
    with pytest.raises(ConfigError, match="onnx package"):
        export_onnx(_tiny_configured()[0], TINY_SPEC.example(2))


def test_attention_products_are_a_typed_error():
    """vit_tiny's attention scores (SBSMatmul) have no ONNX export: ModelError naming the layer."""
    from hwsbs.lut.configs import uniform_config

    spec = ModelSpec("vit_tiny", 10, 1, (8, 8))
    space = convert_model(spec.build(), spec.example(4), (2, 4, 8), prune=True)
    model = compressed_model(spec, uniform_config(space, 8))
    with pytest.raises(ModelError, match="attention products"):
        export_onnx(model, spec.example(2))


def test_cli_export_onnx_with_integer_edges_states_its_tolerance(tmp_path, capsys):
    from hwsbs.export.verify import INTEGER_EDGES_REL_TOL

    run, _ = _run_dir(tmp_path)
    out = tmp_path / "m.onnx"
    argv = ["export", "--run", str(run), "--format", "onnx", "--out", str(out), "--integer-edges"]
    assert main([*argv, "--verify", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["tolerance_rel"] == INTEGER_EDGES_REL_TOL and report["verify"]["passed"], report
