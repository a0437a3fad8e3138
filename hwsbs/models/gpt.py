"""``gpt_tiny``: a small causal byte-level language model in the style of nanoGPT.

Token and learned position embeddings, pre-norm blocks (a fused qkv Linear,
``F.scaled_dot_product_attention(..., is_causal=True)``, an output projection and a
Linear-GELU-Linear MLP), a final LayerNorm and a Linear lm head. ``forward`` maps tokens
``(batch, positions)`` to logits ``(batch, positions, vocabulary)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwsbs.errors import ModelError

from .registry import register_model
from .vit import MLP

__all__ = ["CausalSelfAttention", "GPTBlock", "GPT", "gpt_tiny", "DEFAULT_CONTEXT"]

#: Context when the dataset does not say: the ``text`` dataset's window, so a model built without
#: ``sequence_length`` (e.g. by a caller that passes image geometry only) has the same shapes.
DEFAULT_CONTEXT = 64


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ModelError(f"gpt: width {width} is not a multiple of the {heads} heads")
        self.heads = heads  # attention heads; each sees width // heads features
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.size(0), x.size(1), x.size(2)  # not tuple unpacking: torch.fx traces this
        qkv = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # (B, heads, T, head_dim)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GPTBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """A decoder-only transformer over ``vocab`` tokens with a context of ``context`` positions."""

    def __init__(
        self, vocab: int = 256, context: int = DEFAULT_CONTEXT, width: int = 64, depth: int = 4, heads: int = 4
    ) -> None:
        super().__init__()
        if vocab <= 0 or context <= 0:
            raise ModelError(f"gpt: vocabulary and context must be positive, got {vocab} and {context}")
        self.context = context  # longest sequence the position table covers
        self.tok_embed = nn.Embedding(vocab, width)
        self.pos_embed = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(GPTBlock(width, heads, 4) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        for m in self.modules():  # GPT-2's init: N(0, 0.02) keeps the residual stream small at start
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.size(1)
        torch._assert(t <= self.context, "gpt: the sequence is longer than the model's context")
        positions = torch.arange(t, device=tokens.device)
        x = self.tok_embed(tokens) + self.pos_embed(positions)
        return self.head(self.norm(self.blocks(x)))


@register_model("gpt_tiny")
def gpt_tiny(
    num_classes: int = 256,
    in_channels: int = 1,
    image_size: tuple[int, int] = (1, DEFAULT_CONTEXT),
    sequence_length: int | None = None,
) -> nn.Module:
    """A 4-block, width-64, 4-head GPT; ``num_classes`` is the vocabulary, ``sequence_length`` the context.

    ``in_channels`` and ``image_size`` are accepted (every builder gets them) and ignored.
    """
    return GPT(vocab=num_classes, context=sequence_length or DEFAULT_CONTEXT)
