"""ONNX Runtime as a measured runtime: ``lut build/check --runtime onnxruntime`` round trip."""

from __future__ import annotations

import json

import pytest

from cost_models import cost_model_for
from hardware_profiles import load_profile, resolve_lookup_table
from hwsbs.cli.main import main
from hwsbs.errors import ModelError
from hwsbs.export import compressed_model, default_spec, export_onnx
from hwsbs.lut.builder import MeasureSettings, executed_pairs, measure_jobs, plan_jobs
from hwsbs.lut.configs import uniform_config
from hwsbs.lut.ort_runtime import ORT_PAIRS, ORT_ROUNDED_PAIRS
from hwsbs.sbs.convert import convert_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = ["--repeats", "2", "--warmup", "0", "--threads", "1", "--no-progress", "--runtime", "onnxruntime"]


@pytest.fixture(scope="module")
def ort_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("hw") / "ort-cpu.yaml"
    assert main(["lut", "build", "--model", "small_cnn", "--out", str(out), "--grid", "2", "--rounds", "1", *TINY]) == 0
    return out


def test_build_records_the_runtime_and_the_cpu(ort_profile):
    profile = load_profile(ort_profile)
    table = resolve_lookup_table(profile)[0]
    assert "runtime onnxruntime" in table.device and " (family " in table.device
    assert "onnxruntime" in table.method and "--runtime onnxruntime" in ort_profile.read_text()
    pairs = {(e.w_bits, e.a_bits) for e in table.entries}
    assert pairs == {(w, a) for w, a, _ in ORT_PAIRS}
    assert all(e.mean_s > 0 for e in table.entries)


def test_check_round_trip(ort_profile, capsys):
    argv = ["lut", "check", "--hw", str(ort_profile), "--configs", "3", "--json", *TINY]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["runtime"] == "onnxruntime" and len(report["configs"]) == 3
    assert all(c["measured_s"] > 0 for c in report["configs"])
    assert report["profiles"][0]["cost_model"] == "lut"


def test_torch_stays_the_default_runtime():
    assert executed_pairs("onednn") == executed_pairs("onednn", "torch")
    assert MeasureSettings().runtime == "torch"


def test_attention_products_are_a_typed_error():
    jobs = [j for j in plan_jobs([default_spec("vit_tiny", 10, 1, 8)]) if j.kind == "matmul"][:1]
    with pytest.raises(ModelError, match="attention products"):
        measure_jobs(jobs, MeasureSettings(repeats=1, warmup=0, runtime="onnxruntime"))


def test_cli_bad_runtime_input_is_one_line(tmp_path, capsys):
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(tmp_path / "x.yaml"), "--device", "cuda", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def rounded_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("hw") / "ort-rounded.yaml"
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(out), "--grid", "2", "--rounds", "1", *TINY]
    assert main([*argv, "--round-8bit-weights"]) == 0
    return out


def _uniform_costs(profile) -> dict[int, float]:
    spec = default_spec("small_cnn", 10, 1, 8)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    model = cost_model_for(load_profile(profile))
    return {b: uniform_config(space, b, pinned_bits=8).cost(model) for b in (8, 4, 2)}


def test_rounded_8bit_weights_price_every_width_as_the_one_fused_kernel(rounded_profile, ort_profile, capsys):
    table = resolve_lookup_table(load_profile(rounded_profile))[0]
    assert (
        {(e.w_bits, e.a_bits) for e in table.entries} == {(w, a) for w, a, _ in ORT_ROUNDED_PAIRS} == {(8, 8), (32, 32)}
    )
    assert "rounded onto int8" in table.method and "--round-8bit-weights" in rounded_profile.read_text()
    rounded = _uniform_costs(rounded_profile)
    assert rounded[8] == rounded[4] == rounded[2] > 0  # only pruning changes a layer's time there
    exact = _uniform_costs(ort_profile)
    assert exact[4] == exact[2] and exact[8] != exact[4]  # exact 8-bit weights are measured apart (two nodes)
    argv = ["lut", "check", "--hw", str(rounded_profile), "--configs", "2", "--json", "--round-8bit-weights", *TINY]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["round_8bit_weights"] is True and len(report["configs"]) == 2


def test_a_rounded_8bit_layer_is_one_integer_node_fewer_than_an_exact_one():
    spec = default_spec("small_cnn", 10, 1, 8)
    space = convert_model(spec.build(), spec.example(), (2, 4, 8), prune=True)
    model = compressed_model(spec, uniform_config(space, 8))

    def nodes(exact: bool) -> int:
        return len(export_onnx(model, spec.example(2), exact_8bit_weights=exact, integer_edges=True).model.graph.node)

    assert nodes(False) < nodes(True)


def test_round_8bit_weights_needs_onnxruntime(tmp_path, capsys):
    argv = ["lut", "build", "--model", "small_cnn", "--out", str(tmp_path / "x.yaml"), "--round-8bit-weights"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--round-8bit-weights" in err and "--runtime onnxruntime" in err
