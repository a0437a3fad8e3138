"""APB runs end to end (issue 18): config.yaml keeps the full-precision counts, ``hwsbs cost``
reproduces result.json, and ``hwsbs export`` runs APB layers on the bitwise kernels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from cost_models import build_cost_model
from cost_models.analytic import apb_index_bits
from hwsbs.cli.main import main
from hwsbs.errors import CheckpointError, ConfigError
from hwsbs.export import APBKernelLayer, export_model, load_exported, load_run
from hwsbs.export.verify import verify_export
from hwsbs.sbs.config_io import CompressionConfig, load_config, save_config
from tests.helpers import tiny_argv


@pytest.fixture(scope="module")
def apb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("apb") / "run"
    argv = tiny_argv("search", "--method", "apb", "--cost", "size", "--out", str(out), epochs=(1, 1, 1))
    assert main(argv) == 0
    return out


def test_config_yaml_round_trips_the_full_precision_counts(apb_run, tmp_path):
    config = load_config(apb_run / "config.yaml")
    result = json.loads((apb_run / "result.json").read_text())
    counts = {layer["name"]: layer["fp_weights"] for layer in result["layers"] if "fp_weights" in layer}
    assert counts and {d.shape.name: d.fp_weights for d in config.layers if d.fp_weights >= 0} == counts
    assert all(d.w_bits == 1 for d in config.layers if d.fp_weights >= 0)
    save_config(config, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == config
    size = build_cost_model("size")
    assert config.cost(size) == pytest.approx(result["cost"]["compressed"], rel=1e-12)
    binary = CompressionConfig([replace(d, fp_weights=-1) for d in config.layers], batch=config.batch)
    outliers = sum(d.fp_weights * (32 + apb_index_bits(d.shape, d.state)) for d in config.layers if d.fp_weights > 0)
    assert outliers > 0 and config.cost(size) - binary.cost(size) == outliers  # priced, not pure binary


def test_hwsbs_cost_reproduces_result_json(apb_run, capsys):
    result = json.loads((apb_run / "result.json").read_text())
    capsys.readouterr()
    assert main(["cost", "--config", str(apb_run / "config.yaml"), "--hw", "a100", "--cost", "size", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"][0]["cost"] == pytest.approx(result["cost"]["compressed"], rel=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"fp_weights": -1}, "expected 0"), ({"w_bits": 4}, "APB layer"), ({"fp_weights": 10**9}, "at most")],
)
def test_bad_full_precision_counts_are_one_line_errors(apb_run, tmp_path, change, match):
    data = yaml.safe_load((apb_run / "config.yaml").read_text())
    layer = next(entry for entry in data["layers"] if "fp_weights" in entry)
    layer.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert len(str(info.value).splitlines()) == 1 and "fp_weights" in str(info.value)


def test_export_runs_apb_layers_on_the_bitwise_kernels_and_agrees(apb_run, tmp_path):
    spec, model, config = load_run(apb_run)
    exported = export_model(model, spec.example(), spec=spec)
    apb = [name for name, m in exported.net.named_modules() if isinstance(m, APBKernelLayer)]
    assert len(apb) == sum(d.fp_weights >= 0 for d in config.layers) and apb
    assert all(row["kernel"] == "apb" for row in exported.layer_table() if row["path"] == "apb")
    batches = [spec.example(64, seed=s) for s in range(2)]
    stats = verify_export(model, exported, batches)
    # float32 outlier sums run in the kernel's order, not torch's: 2e-3 seen on an AVX-512 EPYC
    assert stats["passed"] and stats["max_rel"] < 1e-2
    exported.save(tmp_path / "m.pt")
    again = load_exported(tmp_path / "m.pt")
    x = spec.example(16, seed=5)
    assert torch.equal(again(x), exported(x))


def test_cli_export_verifies_an_apb_run(apb_run, tmp_path, capsys):
    out = tmp_path / "m.pt"
    capsys.readouterr()
    assert main(["export", "--run", str(apb_run), "--out", str(out), "--verify", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["passed"]
    assert {row["path"] for row in report["layers"]} >= {"apb"}
    assert main(["export", "--run", str(apb_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "APB layers have no ONNX export" in capsys.readouterr().err


class Killed(BaseException):
    """Stands for SIGKILL: nothing in hwsbs catches it."""


@pytest.mark.parametrize("phase", ["search", "finetune"])
def test_an_apb_run_killed_inside_a_phase_resumes_to_the_same_result(apb_run, tmp_path, monkeypatch, phase):
    """The checkpoint of an APB phase holds alpha, delta and the mask; resuming restores them."""
    import hwsbs.pipeline as pipeline
    import hwsbs.run_state as run_state

    out = tmp_path / "run"
    argv = tiny_argv("search", "--method", "apb", "--cost", "size", "--out", str(out), epochs=(1, 1, 1))
    real = run_state.save_checkpoint

    def save(state, run_dir):
        path = real(state, run_dir)
        if state["phase"] == phase:
            raise Killed(phase)
        return path

    with monkeypatch.context() as m:
        m.setattr(pipeline, "save_checkpoint", save)
        m.setattr(run_state, "save_checkpoint", save)
        with pytest.raises(Killed):
            main(argv)
    assert main([*argv, "--resume"]) == 0
    first, resumed = (json.loads((d / "result.json").read_text()) for d in (apb_run, out))
    assert resumed["cost"] == first["cost"] and resumed["layers"] == first["layers"]
    assert resumed["accuracy"]["compressed"] == pytest.approx(first["accuracy"]["compressed"])


def test_a_config_whose_outlier_count_disagrees_with_the_checkpoint_is_refused(apb_run, tmp_path):
    data = yaml.safe_load((apb_run / "config.yaml").read_text())
    layer = next(x for x in data["layers"] if x.get("fp_weights"))
    layer["fp_weights"] -= 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CheckpointError, match=f"APB layer {layer['name']} keeps other full-precision weights"):
        load_run(apb_run, config_path=tmp_path / "config.yaml")
