"""Deployable export: integer codes, exact integer kernels, pruned structure, save/load, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hwsbs.checkpoint import save_checkpoint
from hwsbs.cli.main import main
from hwsbs.data import build_dataset, make_loader
from hwsbs.export import (
    ModelSpec,
    compressed_model,
    export_model,
    int16_pair_safe,
    load_exported,
    onednn_available,
    weight_codes,
)
from hwsbs.export.encoding import input_codes, odd_weights
from hwsbs.export.kernels import pad_for_int_mm
from hwsbs.export.verify import MIN_ARGMAX_AGREEMENT, REL_TOL, verify_export
from hwsbs.quant.layers import SBSConv2d, sbs_layers
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, load_config, save_config
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import apply_config
from tests.helpers import pretrained_small_cnn

BACKENDS = ["onednn", "intmm", "float"] if onednn_available() else ["intmm", "float"]
TINY_SPEC = ModelSpec("tests.test_export:tiny_net", 10, 3, (8, 8))


class TinyNet(nn.Module):
    """Signed input, a prunable conv -> depthwise -> pointwise chain and a head: every export path."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.expand(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = self.project(x)  # no norm, no ReLU: the head sees signed inputs
        return self.fc(self.pool(x).flatten(1))


def tiny_net(num_classes: int = 10, in_channels: int = 3, image_size=(8, 8)) -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(num_classes, in_channels)
    for m in model.modules():  # non-trivial eval statistics, so folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def _mixed_config(space, bits: dict[str, tuple[int, int]], prune: dict[str, list[int]]) -> CompressionConfig:
    source = space.kept_in_source()
    passthrough = {p for g in space.groups for p in g.passthrough}
    layers = []
    for name in space.layer_names:
        shape = space.shapes[name]
        own = prune.get(source.get(name, ""), []) if name in passthrough else prune.get(name, [])
        kept_in = shape.in_channels - len(prune.get(source[name], [])) if name in source else None
        w, a = bits.get(name, (8, 8))
        layers.append(LayerDecision(shape, w, a, list(own), kept_in))
    return CompressionConfig(layers, bits=[2, 4, 8])


# Stem signed 4/4 (border correction), expand 8/4 (8-bit codes), depthwise 4/8 (grouped, 8-bit
# inputs), project 2/2, head float: every path once; expand prunes 4 channels.
TINY_BITS = {"stem": (4, 4), "expand": (8, 4), "dw": (4, 8), "project": (2, 2), "fc": (32, 32)}
TINY_PRUNE = {"expand": [0, 1, 2, 3]}


def _tiny_configured():
    space = convert_model(tiny_net(), TINY_SPEC.example(16), (2, 4, 8))
    config = _mixed_config(space, TINY_BITS, TINY_PRUNE)
    return apply_config(space, config).eval(), config


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 7, 8])
def test_weight_codes_reproduce_the_fake_quantised_weight(bits):
    torch.manual_seed(bits)
    layer = SBSConv2d.from_module(nn.Conv2d(8, 6, 3), (2, 4, 8), 4, 0.5, 1.0)
    layer._calibrate(torch.randn(2, 8, 5, 5))
    layer.set_fixed(bits, 32)
    codes = weight_codes(layer, bits)
    assert codes.codes.dtype == torch.int8 and codes.doubled == (bits == 8)
    n = odd_weights(codes.codes, codes.doubled)
    assert bool((n % 2 != 0).all()) and int(n.abs().max()) <= 2**bits - 1
    w_q = layer.quantized_weight().detach()
    torch.testing.assert_close(codes.scale * n.float(), w_q, rtol=1e-6, atol=1e-7)


def test_input_levels_are_bit_identical_to_the_fake_quantiser():
    layer = SBSConv2d.from_module(nn.Conv2d(4, 4, 3), (2, 4, 8), 4, 0.5, 1.0)
    x = torch.randn(3, 4, 6, 6)
    layer._calibrate(x)
    for bits in (2, 4, 8):
        layer.set_fixed(32, bits)
        clip = layer._act_clip(x).detach()
        levels = input_codes(x, clip, bits, bool(layer.act_signed))
        step = 1.0 / (2**bits - 1)
        expected = layer.quantized_input(x).detach()
        rebuilt = clip * (2.0 * (step * levels) - 1.0) if bool(layer.act_signed) else clip * (step * levels)
        assert torch.equal(rebuilt, expected)


def test_int16_pair_rule():
    assert int16_pair_safe(8, 7) and int16_pair_safe(6, 8) and int16_pair_safe(4, 4)
    assert not int16_pair_safe(8, 8) and not int16_pair_safe(7, 8)


def test_padding_for_cuda_int_mm_keeps_the_product():
    a = torch.randint(-128, 128, (5, 13), dtype=torch.int8)
    b = torch.randint(-128, 128, (13, 7), dtype=torch.int8)
    ap, bp = pad_for_int_mm(a, b)
    assert ap.shape[0] > 16 and ap.shape[1] % 8 == 0 and bp.shape[1] % 8 == 0
    assert torch.equal(torch._int_mm(ap, bp)[:5, :7], torch._int_mm(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_exported_layer_matches_its_sbs_layer(backend):
    """Layer by layer on the reference's own inputs: integer kernels are exact, so only float32
    rounding of the scales remains (relative error ~1e-6, tolerance 1e-5)."""
    model, _ = _tiny_configured()
    x = TINY_SPEC.example(16)
    inputs, outputs = {}, {}

    def keep(name):
        def hook(mod, args, out):
            inputs[name], outputs[name] = args[0], out

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in sbs_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    exported = export_model(model, x, backend=backend, fold_norms=False)
    layers = dict(exported.net.named_modules())
    with torch.no_grad():
        for name, ref in outputs.items():
            inp = inputs[name]
            if inp.dim() == 4:
                inp = inp.contiguous(memory_format=torch.channels_last)
            out = layers[name](inp)
            rel = float((out - ref).abs().max() / ref.abs().max())
            assert rel < 1e-5, f"{name} ({backend}): relative difference {rel:.2e}"


def test_exported_structure_has_kept_channels_and_integer_weights():
    model, config = _tiny_configured()
    exported = export_model(model, TINY_SPEC.example(), backend=BACKENDS[0], spec=TINY_SPEC)
    rows = {r["name"]: r for r in exported.layer_table()}
    for d in config.layers:
        assert (rows[d.shape.name]["in"], rows[d.shape.name]["out"]) == (d.state.kept_in, d.kept_out)
    assert rows["expand"]["out"] == 12 and rows["dw"]["out"] == 12 and rows["project"]["in"] == 12
    for rec in exported.records:
        assert rec.weight.dtype == (torch.int8 if rec.w_bits <= 8 else torch.float32)
        grouped_on_intmm = exported.backend == "intmm" and rec.groups > 1
        assert rec.path == ("float" if rec.w_bits == 32 or grouped_on_intmm else "int8")
    assert {r["folded_norm"] for r in rows.values()} == {"bn0", "bn1", "bn2", None}
    assert {n: r["fused"] for n, r in rows.items()} == {
        "stem": "relu",
        "expand": "relu",
        "dw": "relu",
        "project": None,
        "fc": None,
    }


def test_whole_model_matches_fake_quantised_evaluation():
    """Mixed bits on every path, pruning and a float layer, 256 inputs: the stated tolerance."""
    model, _ = _tiny_configured()
    for backend in BACKENDS:
        exported = export_model(model, TINY_SPEC.example(), backend=backend)
        # _int_mm is a slow kernel on CPU: fewer samples there
        batches = (
            [TINY_SPEC.example(32, seed=9)]
            if backend == "intmm"
            else [TINY_SPEC.example(128, seed=s) for s in range(2)]
        )
        stats = verify_export(model, exported, batches)
        assert stats["passed"], (backend, stats)
        assert stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT and stats["median_rel"] < 1e-5


@pytest.mark.slow
def test_trained_model_matches_fake_quantised_evaluation():
    """Trained small CNN on digits, mixed bits with pruning and a float layer: the stated tolerance."""
    fp = pretrained_small_cnn()
    spec = ModelSpec("small_cnn", 10, 1, (8, 8))
    space = convert_model(fp, spec.example(64), (2, 4, 8))
    bits = {"conv1": (8, 8), "conv2": (4, 4), "conv3": (2, 4), "fc": (32, 32)}
    config = _mixed_config(space, bits, {"conv2": [4, 5, 6, 7, 20, 21, 22, 23]})
    model = apply_config(space, config).eval()
    exported = export_model(model, spec.example(), spec=spec)
    val = make_loader(build_dataset("digits", seed=0).val, 256, False, 0)
    stats = verify_export(model, exported, val)
    assert stats["passed"], stats
    assert stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT and stats["median_rel"] < REL_TOL
    assert abs(stats["accuracy_export"] - stats["accuracy_fake_quant"]) <= 0.01


def test_save_and_load_round_trip(tmp_path):
    model, _ = _tiny_configured()
    exported = export_model(model, TINY_SPEC.example(), spec=TINY_SPEC)
    path = exported.save(tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors and metadata only
    assert raw["format"] == "hwsbs-export/1" and raw["layers"][1]["weight"].dtype == torch.int8
    loaded = load_exported(path)
    x = TINY_SPEC.example(8, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(x), exported(x))
    assert [r.path for r in loaded.records] == [r.path for r in exported.records]


def _run_dir(tmp_path):
    """A finished run directory of the small CNN (config, checkpoint, options) without a search
    (untrained weights: the export does not care)."""
    torch.manual_seed(0)
    fp = ModelSpec("small_cnn", 10, 1, (8, 8)).build()
    space = convert_model(fp, ModelSpec("small_cnn", 10, 1, (8, 8)).example(64), (2, 4, 8))
    config = _mixed_config(space, {"conv2": (4, 4), "conv3": (4, 2)}, {"conv2": [0, 1, 2, 3]})
    config.model, config.dataset = "small_cnn", "digits"
    model = apply_config(space, config)
    run = tmp_path / "run"
    run.mkdir()
    save_config(config, run / "config.yaml")
    save_checkpoint({"phase": "done", "epoch": 0, "model": model.state_dict(), "optim": {}}, run)
    (run / "options.json").write_text(json.dumps({"model": "small_cnn", "data": "digits", "data_dir": None}))
    return run, model


def test_cli_export_from_run_directory(tmp_path, capsys):
    run, model = _run_dir(tmp_path)
    out = tmp_path / "m.pt"
    assert main(["export", "--run", str(run), "--out", str(out), "--verify", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verify"]["passed"] and report["verify"]["inputs"] == "digits validation split"
    assert report["verify"]["samples"] == 100
    assert [r["out"] for r in report["layers"]] == [32, 60, 64, 10]
    loaded = load_exported(out)
    x = ModelSpec("small_cnn", 10, 1, (8, 8)).example(4)
    with torch.no_grad():
        assert int((loaded(x).argmax(1) == model.eval()(x).argmax(1)).sum()) >= 3
    # the same from explicit files
    assert (
        main(
            [
                "export",
                "--config",
                str(run / "config.yaml"),
                "--checkpoint",
                str(run / "checkpoint.pt"),
                "--model",
                "small_cnn",
                "--out",
                str(tmp_path / "m2.pt"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        ([], "give --run RUN_DIR, or --config FILE --checkpoint FILE --model NAME"),
        (["--run", "/nonexistent/run"], "--run /nonexistent/run: not a directory"),
    ],
)
def test_cli_export_bad_input_is_one_line(args, needle, capsys):
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_cli_export_rejects_a_checkpoint_of_another_config(tmp_path, capsys):
    run, _ = _run_dir(tmp_path)
    unpruned = CompressionConfig([LayerDecision(d.shape, 8, 8) for d in load_config(run / "config.yaml").layers])
    other = compressed_model(ModelSpec("small_cnn", 10, 1, (8, 8)), unpruned)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    code = main(
        ["export", "--run", str(run), "--checkpoint", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x.pt")]
    )
    assert code == 2 and "does not match" in capsys.readouterr().err
