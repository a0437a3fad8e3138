"""ONNX Runtime as a measured runtime: ``lut build/check --runtime onnxruntime`` round trip."""

from __future__ import annotations

import json

import pytest

from hardware_profiles import load_profile, resolve_lookup_table
from hwsbs.cli.main import main
from hwsbs.errors import ModelError
from hwsbs.export import default_spec
from hwsbs.lut.builder import MeasureSettings, executed_pairs, measure_jobs, plan_jobs
from hwsbs.lut.ort_runtime import ORT_PAIRS

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
