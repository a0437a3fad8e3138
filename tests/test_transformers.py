"""Transformers and other user models: attention, Linear-like ops and coverage (issue 14)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cost_models import build_cost_model, cost_model_for
from cost_models.base import LayerShape, LayerState
from hwsbs.errors import ModelError
from hwsbs.quant.matmul import SBSMatmul
from hwsbs.sbs.adapters import adapt_layers, register_layer_adapter
from hwsbs.sbs.attention import SearchableMultiheadAttention, expose_attention
from hwsbs.sbs.convert import convert_model

WIDTH, HEADS, TOKENS = 32, 4, 12


class EncoderClassifier(nn.Module):
    """A TransformerEncoder classifier as a user writes it."""

    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, WIDTH)
        block = nn.TransformerEncoderLayer(WIDTH, HEADS, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


class SdpaBlock(nn.Module):
    """nanoGPT-style attention: a fused qkv projection and F.scaled_dot_product_attention."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, WIDTH)
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.fc = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.embed(x)).view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.fc(self.proj(y.transpose(1, 2).reshape(b, t, WIDTH)))


class Partly(nn.Module):
    """One Linear and a product with a bare parameter hwsbs cannot quantise (89% of the MACs)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ self.w


def _tokens(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, TOKENS, 8, generator=torch.Generator().manual_seed(0))


def _float_everywhere(space) -> None:
    for _, layer in space.layers():
        layer.set_fixed(32, 32)


def test_encoder_every_projection_and_both_products_are_searched_and_priced():
    torch.manual_seed(0)
    space = convert_model(EncoderClassifier(), _tokens())
    for i in range(2):
        attn = f"encoder.layers.{i}.self_attn"
        for part in ("q_proj", "k_proj", "v_proj", "out_proj", "attention.scores", "attention.mix"):
            assert f"{attn}.{part}" in space.layer_names
        for part in ("linear1", "linear2"):
            assert f"encoder.layers.{i}.{part}" in space.layer_names
    scores = space.shapes["encoder.layers.0.self_attn.attention.scores"]
    mix = space.shapes["encoder.layers.0.self_attn.attention.mix"]
    head_dim = WIDTH // HEADS
    assert (scores.kind, scores.in_channels, scores.out_channels, scores.out_size) == (
        "matmul",
        head_dim,
        TOKENS,
        (TOKENS, HEADS),
    )
    assert (mix.in_channels, mix.out_channels) == (TOKENS, head_dim)
    assert scores.macs() == HEADS * TOKENS * TOKENS * head_dim
    assert isinstance(space.layer("encoder.layers.0.self_attn.attention.scores"), SBSMatmul)
    assert space.coverage is not None and space.coverage.fraction >= 0.95
    # priced: every searched layer has a non-zero cost on every built-in analytic model
    for name in ("bops",):
        cm = build_cost_model(name)
        for d in space.uniform(8):
            assert cm.layer_cost(d.shape, d.state) > 0, d.shape.name


def test_exposed_attention_computes_what_multihead_attention_computes():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(WIDTH, HEADS, batch_first=False).eval()
    exposed = SearchableMultiheadAttention(mha).eval()
    x = torch.randn(TOKENS, 3, WIDTH)
    mask = torch.ones(TOKENS, TOKENS, dtype=torch.bool).triu(1)  # MHA: True = not allowed
    padding = torch.zeros(3, TOKENS, dtype=torch.bool)
    padding[0, -2:] = True
    want, want_w = mha(x, x, x, attn_mask=mask, key_padding_mask=padding)
    got, got_w = exposed(x, x, x, attn_mask=mask, key_padding_mask=padding)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_converted_model_at_32_bits_is_the_float_model():
    torch.manual_seed(0)
    for model in (EncoderClassifier().eval(), SdpaBlock().eval()):
        x = _tokens()
        want = model(x)
        space = convert_model(model, x)
        _float_everywhere(space)
        space.model.eval()
        torch.testing.assert_close(space.model(x), want, atol=1e-5, rtol=1e-5)


def test_scaled_dot_product_attention_calls_are_searched_and_survive_deepcopy():
    torch.manual_seed(0)
    space = convert_model(SdpaBlock(), _tokens())
    assert space.layer_names == ["embed", "qkv", "sbs_attention.0.scores", "sbs_attention.0.mix", "proj", "fc"]
    assert space.coverage is not None and space.coverage.fraction == pytest.approx(1.0)
    clone = copy.deepcopy(space.model)  # the redirected forward must follow the copy, not the original
    clone.sbs_attention[0].scores.set_fixed(2, 2)
    space.model.eval()
    clone.eval()
    x = _tokens()
    assert not torch.allclose(clone(x), space.model(x))


def test_matmul_gates_choose_bits_from_their_operands_and_the_cost_sees_them():
    torch.manual_seed(0)
    space = convert_model(SdpaBlock(), _tokens())
    layer = space.layer("sbs_attention.0.scores")
    assert layer.current_bits() == (8, 8)
    with torch.no_grad():
        layer.w_theta.fill_(100.0)  # every second-operand gate closed: keys at the lowest width
    assert layer.current_bits() == (2, 8)
    bops = build_cost_model("bops")
    shape = space.shapes["sbs_attention.0.scores"]
    assert bops.layer_cost(shape, LayerState(2, 8, shape.in_channels, shape.out_channels)) == pytest.approx(
        shape.macs() * 16
    )


def test_matmul_costs_on_every_builtin_model_grow_with_bits():
    shape = LayerShape("attn.scores", "matmul", 64, 128, in_size=(128, 8), out_size=(128, 8))
    models = {
        "bops": build_cost_model("bops"),
        "roofline": cost_model_for("a100", "roofline"),
        "bit_serial": cost_model_for("bismo", "bit_serial"),
        "energy": cost_model_for("bitfusion", "energy"),
    }
    assert build_cost_model("size").layer_cost(shape, LayerState(8, 8, 64, 128)) == 0  # no stored weights
    for name, cm in models.items():
        low = cm.layer_cost(shape, LayerState(2, 2, 64, 128), batch=8)
        high = cm.layer_cost(shape, LayerState(8, 8, 64, 128), batch=8)
        wide = cm.layer_cost(shape, LayerState(8, 8, 64, 128), batch=16)
        assert 0 < low <= high < wide, name


def test_hf_conv1d_is_recognised_through_its_adapter():
    class Conv1D(nn.Module):  # the layout of transformers.pytorch_utils.Conv1D
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(nx, nf))
            self.bias = nn.Parameter(torch.randn(nf))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)

    Conv1D.__module__ = "transformers.pytorch_utils"
    Conv1D.__qualname__ = "Conv1D"
    model = nn.Sequential(Conv1D(16, 8), nn.ReLU(), Conv1D(4, 16))
    x = torch.randn(3, 8)
    want = model(x)
    assert adapt_layers(model) == ["0", "2"]
    assert all(isinstance(model[i], nn.Linear) for i in (0, 2))
    torch.testing.assert_close(model(x), want)


def test_user_adapter_registry_warns_on_overwrite_and_rejects_non_layers():
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    @register_layer_adapter(Odd)
    def to_identity(module: nn.Module) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ModelError, match="returned Identity, not an nn.Linear or nn.Conv2d"):
        adapt_layers(nn.Sequential(Odd()))
    with pytest.warns(UserWarning, match="registered again"):
        register_layer_adapter(Odd)(lambda m: nn.Linear(1, 1))


def test_a_model_with_only_unsupported_compute_fails_naming_its_ops():
    class Einsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bi,ij->bj", x, self.w)

    with pytest.raises(ModelError, match=r"no layer hwsbs can quantise: its compute is Einsum \(\w+\) \(100%\)"):
        convert_model(Einsum(), torch.randn(2, 8))


def test_coverage_names_the_compute_left_in_float():
    space = convert_model(Partly(), torch.randn(2, 8), pin_first_last=False)
    assert space.coverage is not None
    assert space.coverage.fraction == pytest.approx(64 / (64 + 512))
    assert space.coverage.float_names() == ["Partly (mm)"]


def test_expose_attention_leaves_unsupported_variants_in_float():
    model = nn.Sequential()
    model.add_module("attn", nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True))
    with pytest.warns(UserWarning, match="stays in float"):
        assert expose_attention(model, torch.randn(3, 2, WIDTH)) == []


def test_the_lut_builder_measures_attention_products():
    from hardware_profiles.lut_table import LookupTable
    from hwsbs.export.source import ModelSpec
    from hwsbs.lut.builder import MeasureSettings, measure_jobs, plan_jobs

    jobs = [j for j in plan_jobs([ModelSpec("vit_tiny", 10, 1, (8, 8))]) if j.kind == "matmul"]
    assert {j.signature for j in jobs} == {"matmul_m16_k16_n16_h4"}  # 16 patches, head width 16, 4 heads
    entries = measure_jobs(jobs, MeasureSettings(warmup=1, repeats=2, min_time_s=0.0, rounds=1))
    assert entries and all(e.mean_s > 0 and e.signature == jobs[0].signature for e in entries)
    pairs = {(e.w_bits, e.a_bits) for e in entries}
    assert (8, 8) in pairs and (32, 32) in pairs  # every executed pair: the float product at each
    LookupTable(device="cpu", method="test", fallback="next_wider", entries=entries)  # a valid table


def test_low_coverage_warns_and_pinned_only_models_fail_in_one_line():
    from hwsbs.sbs.coverage import check_searchable

    logged: list[str] = []
    space = convert_model(Partly(), torch.randn(2, 8), pin_first_last=False)
    with pytest.warns(
        UserWarning, match=r"only 11% of the model's MACs are searched; left in float: its compute is Partly"
    ):
        report = check_searchable(space, logged.append)
    assert report == {"coverage": pytest.approx(64 / 576, abs=1e-6), "float_compute": ["Partly (mm)"]}
    assert logged == ["coverage: 11.1% of the model's MACs are quantised and priced"]
    pinned = convert_model(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(2, 8))
    with pytest.raises(ModelError, match=r"^nothing to search: the only layers found \(0, 2\) are pinned"):
        check_searchable(pinned, logged.append)


def test_api_search_of_a_transformer_reports_coverage(tmp_path):
    import json

    import hwsbs
    from tests.helpers import digits_loaders

    class Digits(nn.Module):  # the 8x8 digits as 8 tokens of 8 pixels
        def __init__(self) -> None:
            super().__init__()
            self.net = EncoderClassifier(layers=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1, 2))

    torch.manual_seed(0)
    train, val = digits_loaders(subset=128)
    schedule = dict(pretrain_epochs=1, search_epochs=1, finetune_epochs=0)
    result = hwsbs.search(Digits(), train, val, hw="a100", out=str(tmp_path / "run"), **schedule)
    data = json.loads((result.run_dir / "result.json").read_text())
    assert data["coverage"] >= 0.95 and data["float_compute"] == []
    searched = {layer["name"] for layer in data["layers"]}
    assert "net.encoder.layers.0.self_attn.attention.scores" in searched
