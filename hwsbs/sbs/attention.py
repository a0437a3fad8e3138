"""Attention made searchable: projections as Linear layers, both products as Matmul modules.

Two ways attention reaches a model, and how each is exposed before conversion *(hwsbs)*:

* ``nn.MultiheadAttention`` reads its packed ``in_proj_weight`` and ``out_proj.weight`` directly,
  so wrapping its submodules would quantise nothing. It is replaced by
  :class:`SearchableMultiheadAttention`: Q, K, V and output projections as four ``nn.Linear``
  and the attention itself as an :class:`AttentionCore`, numerically the same function.
* Modules that call ``F.scaled_dot_product_attention`` (nanoGPT-style code, Hugging Face models
  with ``attn_implementation="sdpa"``) keep their code. A sample forward finds the innermost
  module issuing each call; that module gets one :class:`AttentionCore` per call, and its
  forward runs under a torch-function mode that sends the k-th call to its k-th core.

An :class:`AttentionCore` computes ``softmax(q k^T * scale + mask) v`` with the two products as
:class:`~hwsbs.quant.matmul.Matmul` modules, which conversion turns into searched, priced layers.
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.overrides import TorchFunctionMode

from hwsbs.quant.matmul import Matmul

__all__ = ["AttentionCore", "SearchableMultiheadAttention", "expose_attention"]

#: The attribute holding the cores of a module whose forward calls scaled_dot_product_attention.
CORES_ATTRIBUTE = "sbs_attention"


class AttentionCore(nn.Module):
    """``scaled_dot_product_attention``'s function with Q K^T and P V as Matmul modules."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = Matmul()  # Q x K^T: queries (a_bits) by keys (w_bits)
        self.mix = Matmul()  # P x V: attention probabilities (a_bits) by values (w_bits)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
        enable_gqa)``'s arguments and result (bool masks: True attends); see :meth:`attend`."""
        return self.attend(query, key, value, *args, **kwargs)[0]

    def attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attn_mask: Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """``(output, attention probabilities)``."""
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        scores = self.scores(query, key.transpose(-2, -1)) * factor
        if is_causal:
            allowed = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        probs = torch.softmax(scores, dim=-1)
        if dropout_p > 0.0:  # as the fused op: dropout whenever asked (callers pass 0 in eval)
            probs = F.dropout(probs, dropout_p, training=True)
        return self.mix(probs, value), probs


class SearchableMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with separate Q/K/V/output projections and an AttentionCore.

    Same forward signature and outputs. The attributes ``in_proj_weight = in_proj_bias = None``
    and ``_qkv_same_embed_dim = False`` keep ``nn.TransformerEncoderLayer`` off its fused fast
    path, which would read the packed weights this module no longer has.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, h = mha.embed_dim, mha.num_heads
        self.embed_dim, self.num_heads, self.head_dim = e, h, e // h
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        self.in_proj_weight: Tensor | None = None
        self.in_proj_bias: Tensor | None = None
        self._qkv_same_embed_dim = False
        bias = mha.in_proj_bias is not None
        weights = _projection_weights(mha)
        device, dtype = mha.out_proj.weight.device, mha.out_proj.weight.dtype
        self.q_proj, self.k_proj, self.v_proj = (
            nn.Linear(w.shape[1], e, bias=bias, device=device, dtype=dtype) for w in weights
        )
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, device=device, dtype=dtype)
        with torch.no_grad():
            for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                proj.weight.copy_(weights[i])
                if bias:
                    cast(Tensor, proj.bias).copy_(cast(Tensor, mha.in_proj_bias)[i * e : (i + 1) * e])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                cast(Tensor, self.out_proj.bias).copy_(mha.out_proj.bias)
        self.attention = AttentionCore()

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        mask = _additive_mask(attn_mask, key_padding_mask, b, self.num_heads, n_q, n_k, q.dtype)
        causal = is_causal and attn_mask is None
        out, probs = self.attention.attend(q, k, v, mask, self.dropout if self.training else 0.0, causal)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, self.embed_dim))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = probs.mean(1) if average_attn_weights else probs
        return out, weights.squeeze(0) if unbatched else weights

    def _heads(self, x: Tensor) -> Tensor:
        """(batch, tokens, embed) -> (batch, heads, tokens, head_dim)."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)


def _projection_weights(mha: nn.MultiheadAttention) -> tuple[Tensor, Tensor, Tensor]:
    e = mha.embed_dim
    if mha._qkv_same_embed_dim:
        w = cast(Tensor, mha.in_proj_weight)
        return w[:e], w[e : 2 * e], w[2 * e :]
    return cast(Tensor, mha.q_proj_weight), cast(Tensor, mha.k_proj_weight), cast(Tensor, mha.v_proj_weight)


def _additive_mask(
    attn_mask: Tensor | None, key_padding_mask: Tensor | None, b: int, h: int, n_q: int, n_k: int, dtype: torch.dtype
) -> Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = not allowed; float: added) as one float mask."""
    if attn_mask is None and key_padding_mask is None:
        return None
    given = cast(Tensor, attn_mask if attn_mask is not None else key_padding_mask)  # one of them is set
    mask = torch.zeros(b, h, n_q, n_k, dtype=dtype, device=given.device)
    if attn_mask is not None:
        am = attn_mask.view(b, h, n_q, n_k) if attn_mask.dim() == 3 else attn_mask
        mask = mask.masked_fill(am, float("-inf")) if am.dtype == torch.bool else mask + am
    if key_padding_mask is not None:
        kpm = key_padding_mask.view(b, 1, 1, n_k)
        mask = mask.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else mask + kpm
    return mask


class _RedirectAttention(TorchFunctionMode):
    """Sends the k-th ``scaled_dot_product_attention`` call of one forward to the k-th core."""

    def __init__(self, cores: list[nn.Module]) -> None:
        super().__init__()
        self.cores = cores
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.calls < len(self.cores):
            core = self.cores[self.calls]
            self.calls += 1
            return core(*args, **kwargs)
        return func(*args, **kwargs)


def _symbolic_tracing() -> bool:
    """True inside ``torch.fx.symbolic_trace`` (the name changed across torch versions)."""
    check = getattr(fx._symbolic_trace, "is_fx_symbolic_tracing", None) or fx._symbolic_trace.is_fx_tracing
    return bool(check())


def _forward_with_cores(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's forward, with this module's attention calls going through its cores."""
    forward = type(self).forward
    if _symbolic_tracing():  # torch.fx sees the plain call (a node it does not prune through)
        return forward(self, *args, **kwargs)
    with _RedirectAttention(list(cast(nn.ModuleList, getattr(self, CORES_ATTRIBUTE)))):
        return forward(self, *args, **kwargs)


class _FindAttentionCalls(TorchFunctionMode):
    """Counts ``scaled_dot_product_attention`` calls per innermost calling module."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.calls: dict[str, int] = {}
        self.open: dict[str, int] = {}  # calls in the current forward of each module

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is F.scaled_dot_product_attention:
            caller = self.stack[-1]
            self.open[caller] = self.open.get(caller, 0) + 1
            self.calls[caller] = max(self.calls.get(caller, 0), self.open[caller])
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def _attention_callers(model: nn.Module, example: Tensor) -> dict[str, int]:
    """For each module whose own forward calls scaled_dot_product_attention: calls per forward."""
    stack = [""]
    finder = _FindAttentionCalls(stack)
    hooks = []
    for name, mod in model.named_modules():
        if name:

            def enter(_m: nn.Module, _args: Any, name: str = name) -> None:
                stack.append(name)
                finder.open[name] = 0

            def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
                stack.pop()

            hooks += [mod.register_forward_pre_hook(enter), mod.register_forward_hook(leave)]
    was_training = model.training
    model.eval()
    try:
        with finder:
            model(example)
    except Exception:
        return {}  # the model's own failure is reported by shape tracing, with its message
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return finder.calls


def expose_attention(model: nn.Module, example: Tensor) -> list[str]:
    """Make every attention of ``model`` searchable, in place; returns the names of the attentions.

    ``nn.MultiheadAttention`` modules are replaced (see :class:`SearchableMultiheadAttention`);
    modules calling ``scaled_dot_product_attention`` get their cores. Variants this cannot express
    (``add_bias_kv``, ``add_zero_attn``) are left in float with a warning, and the coverage report
    names them.
    """
    from .convert import set_submodule  # convert imports this module

    exposed = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.MultiheadAttention):
            if mod.bias_k is not None or mod.add_zero_attn:
                warnings.warn(f"{name}: MultiheadAttention with add_bias_kv/add_zero_attn stays in float", stacklevel=2)
                continue
            set_submodule(model, name, SearchableMultiheadAttention(mod))
            exposed.append(name)
    for name, calls in _attention_callers(model, example).items():
        mod = model.get_submodule(name)
        if isinstance(mod, AttentionCore) or calls == 0:
            continue
        param = next(iter(mod.parameters()), None)
        cores = nn.ModuleList(AttentionCore() for _ in range(calls))
        mod.add_module(CORES_ATTRIBUTE, cores.to(param.device) if param is not None else cores)
        mod.forward = types.MethodType(_forward_with_cores, mod)  # an instance's own forward, kept by deepcopy
        exposed.append(name or type(model).__name__)
    return exposed
