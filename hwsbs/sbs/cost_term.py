"""Differentiable hardware cost for ANY black-box cost model (method section 4, *(hwsbs)*).

Per layer the weight gates give a selection vector over candidate bit widths
(``s_1 = 1 - g_2``, ``s_j = g_2...g_j (1 - g_(j+1))``, ``s_K = g_2...g_K``), and so do the activation
gates; the layer's cost is ``s_w^T T s_a`` with ``T[i, j] = cost(b_i, b_j, kept channels)``. This is
multilinear in the gates, so its derivative with respect to a gate equals the cost difference when
that gate flips. Channel gates get the difference between keeping ``k`` and ``k -/+ group`` channels,
for the producer and for every layer whose input (or depthwise channels) it shrinks. The cost
model is only ever called on discrete states, and every call is memoised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cost_models.base import CostModel, LayerShape, LayerState

from .convert import SearchSpace

__all__ = ["selection_vector", "CostTerm"]


def selection_vector(gates: Sequence[Tensor] | Tensor, k: int) -> Tensor:
    """One-hot (in value) selection over ``k`` candidates from ``k - 1`` nested gates, differentiably."""
    if len(gates) == 0:
        return torch.ones(1)
    parts = []
    prefix = torch.ones((), dtype=gates[0].dtype)
    for j in range(k - 1):
        parts.append(prefix * (1 - gates[j]))
        prefix = prefix * gates[j]
    parts.append(prefix)
    return torch.stack(parts)


def _one_hot(index: int, k: int) -> Tensor:
    v = torch.zeros(k)
    v[index] = 1.0
    return v


class CostTerm:
    """The model's total cost ``R`` as a tensor whose gradient reaches every gate threshold.

    Call it after a forward pass of the search model (the gates it reads are the forward's).
    """

    def __init__(self, space: SearchSpace, cost_model: CostModel, batch: int = 1) -> None:
        self.space = space
        self.cost_model = cost_model
        self.batch = int(batch)
        self._kept_in_source = space.kept_in_source()
        self._consumers_of: dict[str, list[str]] = {}
        for g in space.groups:
            self._consumers_of[g.producer] = [g.consumer, *g.passthrough]
        self._depthwise = {p for g in space.groups for p in g.passthrough}

    def _layer_cost(self, shape: LayerShape, w: int, a: int, kin: int, kout: int) -> float:
        # Memoised by the cost model itself: a step asks for the same few states again and again.
        return float(self.cost_model.cached_layer_cost(shape, LayerState(w, a, kin, kout), self.batch))

    def cost_table(self, name: str, kin: int, kout: int, w_bits: Sequence[int], a_bits: Sequence[int]) -> Tensor:
        """``T[i, j]`` = cost of layer ``name`` at ``(w_bits[i], a_bits[j])`` with these channels."""
        shape = self.space.shapes[name]
        return torch.tensor([[self._layer_cost(shape, w, a, kin, kout) for a in a_bits] for w in w_bits],
                            dtype=torch.float64)

    # ------------------------------------------------------------------ discrete state
    def _kept_out(self, name: str) -> int:
        layer = self.space.layer(name)
        if name in self._depthwise:
            return self._kept_out(self._kept_in_source[name])
        g = layer.last_p_gates
        if g is None:
            return self.space.shapes[name].out_channels
        sizes = torch.tensor(layer.group_sizes(), dtype=g.dtype)
        return int(round(float((g.detach() * sizes).sum())))

    def _kept_in(self, name: str) -> int:
        src = self._kept_in_source.get(name)
        return self.space.shapes[name].in_channels if src is None else self._kept_out(src)

    def _bit_choices(self, name: str) -> tuple[list[int], Tensor, list[int], Tensor]:
        """Candidate bits and (differentiable) selection vectors for weights and activations."""
        layer = self.space.layer(name)
        bits = list(layer.bits)
        searching = layer.mode == "search" and not layer.pinned
        if searching and layer.search_weight_bits and layer.last_w_gates is not None:
            w_bits, s_w = bits, selection_vector(layer.last_w_gates, len(bits))
        else:
            w_bits, s_w = [layer.fixed_w_bits], torch.ones(1)
        if searching and layer.last_a_gates is not None:
            a_bits, s_a = bits, selection_vector(layer.last_a_gates, len(bits))
        else:
            a_bits, s_a = [layer.fixed_a_bits], torch.ones(1)
        return w_bits, s_w, a_bits, s_a

    def current_states(self) -> dict[str, LayerState]:
        """Each layer's discrete state as of the last forward."""
        states = {}
        for name in self.space.layer_names:
            w_bits, s_w, a_bits, s_a = self._bit_choices(name)
            states[name] = LayerState(
                w_bits[int(s_w.argmax())], a_bits[int(s_a.argmax())], self._kept_in(name), self._kept_out(name)
            )
        return states

    # ------------------------------------------------------------------ the term
    def __call__(self) -> Tensor:
        """Total cost (float64, on the CPU) for the latest forward, differentiable w.r.t. gates."""
        total = torch.zeros((), dtype=torch.float64)
        states = self.current_states()
        for name in self.space.layer_names:
            st = states[name]
            w_bits, s_w, a_bits, s_a = self._bit_choices(name)
            table = self.cost_table(name, st.kept_in, st.kept_out, w_bits, a_bits)
            total = total + s_w.cpu().double() @ table @ s_a.cpu().double()
        for group in self.space.groups:
            total = total + self._channel_term(group.producer, states)
        return total

    def _flip_delta(self, name: str, st: LayerState, d_in: int, d_out: int) -> float:
        """Cost change of layer ``name`` when its kept channels change by (d_in, d_out)."""
        shape = self.space.shapes[name]
        kin, kout = st.kept_in + d_in, st.kept_out + d_out
        if kin <= 0 or kout <= 0:
            return self._layer_cost(shape, st.w_bits, st.a_bits, st.kept_in, st.kept_out)
        return self._layer_cost(shape, st.w_bits, st.a_bits, st.kept_in, st.kept_out) - self._layer_cost(
            shape, st.w_bits, st.a_bits, kin, kout
        )

    def _channel_term(self, producer: str, states: dict[str, LayerState]) -> Tensor:
        """``sum_c (g_c - sg(g_c)) * delta_c``: value 0, gradient = the flip difference per group."""
        layer = self.space.layer(producer)
        g = layer.last_p_gates
        if g is None:
            return torch.zeros((), dtype=torch.float64)
        sizes = layer.group_sizes()
        deltas = torch.empty(len(sizes), dtype=torch.float64)
        cache: dict[tuple[int, bool], float] = {}
        for c, (size, gate) in enumerate(zip(sizes, g.detach().tolist())):
            kept = gate > 0.5
            key = (size, kept)
            if key not in cache:
                step = -size if kept else size  # flipping a kept group removes it, a pruned one adds it
                delta = self._flip_delta(producer, states[producer], 0, step)
                for other in self._consumers_of.get(producer, []):
                    d_out = step if other in self._depthwise else 0
                    delta += self._flip_delta(other, states[other], step, d_out)
                cache[key] = delta if kept else -delta  # d cost / d g in both cases
            deltas[c] = cache[key]
        g = g.cpu().double()
        return ((g - g.detach()) * deltas).sum()
