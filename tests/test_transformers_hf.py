"""A Hugging Face GPT-2: every projection found through the Conv1D adapter, attention via SDPA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from hwsbs.sbs.convert import convert_model  # noqa: E402  # after the skip: nothing to test without transformers

VOCAB, BLOCKS = 96, 2


class TinyGPT2(nn.Module):
    """GPT2LMHeadModel, 2 blocks of width 64, returning logits (what --model module:factory gets)."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.GPT2Config(
            vocab_size=VOCAB,
            n_positions=32,
            n_embd=64,
            n_layer=BLOCKS,
            n_head=4,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )
        self.gpt = transformers.GPT2LMHeadModel(config)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt(input_ids=tokens).logits


def test_every_gpt2_projection_and_attention_product_is_searched():
    torch.manual_seed(0)
    model = TinyGPT2().eval()
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    want = model(tokens)
    with pytest.warns(UserWarning, match="pruning disabled"):  # GPT-2 does not trace with torch.fx
        space = convert_model(model, tokens)
    for i in range(BLOCKS):
        block = f"gpt.transformer.h.{i}"
        for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            assert f"{block}.{part}" in space.layer_names
            assert space.shapes[f"{block}.{part}"].kind == "linear"
        for part in ("scores", "mix"):
            assert space.shapes[f"{block}.attn.sbs_attention.0.{part}"].kind == "matmul"
    assert space.coverage is not None and space.coverage.fraction >= 0.95
    for _, layer in space.layers():
        layer.set_fixed(32, 32)
    space.model.eval()
    torch.testing.assert_close(space.model(tokens), want, atol=1e-4, rtol=1e-4)
