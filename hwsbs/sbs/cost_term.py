"""Differentiable hardware cost for ANY black-box cost model (method section 4, *(hwsbs)*).

Per layer the weight gates give a selection vector over candidate bit widths
(``s_1 = 1 - g_2``, ``s_j = g_2...g_j (1 - g_(j+1))``, ``s_K = g_2...g_K``), and so do the activation
gates; the layer's cost is ``s_w^T T s_a`` with ``T[i, j] = cost(b_i, b_j, kept channels)``. This is
multilinear in the gates, so its derivative with respect to a gate equals the cost difference when
that gate flips. Channel gates get the difference between keeping ``k`` and ``k -/+ group`` channels,
for the producer and for every layer whose input (or depthwise channels) it shrinks. The cost
model is only ever called on discrete states, and every call is memoised.

Flat corners *(hwsbs)*: a device that runs a (w, a) pair at its wider executed precision (a GPU
roofline: 4/8 costs what 8/8 costs) gives every single flip from 8/8 a zero difference, so no
gate would ever learn that 4/4 is cheaper. Where a bit gate's flip difference is exactly zero,
its gradient is the *expected* flip difference with the layer's other bit gates drawn from their
surrogate probabilities ``sigma((A - theta)/tau)``, which sees joint moves. Where the difference
is not zero (BOPs, bit-serial models, everything multilinear) it is the paper's gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from cost_models.base import CostModel, LayerShape, LayerState
from hwsbs.quant.gates import bits_from_gates

from .channel_cost import channel_act_delta, channel_weight_deltas, group_bits_from, mixed_state
from .convert import SearchSpace
from .flip_expectation import expected_flip_difference

__all__ = ["CostTerm", "Choice", "expected_flip_difference"]

#: A discrete configuration of the search: ``(((layer, w_bits, a_bits), ...), ((producer, pruned
#: group indices), ...))``, hashable so the steady state can be counted. A channel-wise layer's
#: ``w_bits`` is a tuple, one width per output-channel group (``--granularity channel``).
Choice = tuple[tuple[tuple[str, int | tuple[int, ...], int], ...], tuple[tuple[str, tuple[int, ...]], ...]]


class CostTerm:
    """The model's total cost ``R`` as a tensor whose gradient reaches every gate threshold.

    Call it after a forward pass of the search model (the gates it reads are the forward's).
    After each call, :attr:`last_choice` is the discrete configuration it priced.
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
        self.last_choice: Choice | None = None  # the configuration of the latest call
        # Channel-wise layers of the latest call: their group widths and pruned output channels.
        self._group_bits: dict[str, tuple[int, ...]] = {}
        self._pruned: dict[str, list[int]] = {}

    def _layer_cost(self, shape: LayerShape, w: int, a: int, kin: int, kout: int) -> float:
        # Memoised by the cost model itself: a step asks for the same few states again and again.
        return float(self.cost_model.cached_layer_cost(shape, LayerState(w, a, kin, kout), self.batch))

    def cost_table(self, name: str, kin: int, kout: int, w_bits: Sequence[int], a_bits: Sequence[int]) -> Tensor:
        """``T[i, j]`` = cost of layer ``name`` at ``(w_bits[i], a_bits[j])`` with these channels."""
        shape = self.space.shapes[name]
        return torch.tensor(
            [[self._layer_cost(shape, w, a, kin, kout) for a in a_bits] for w in w_bits], dtype=torch.float64
        )

    # ------------------------------------------------------------------ discrete state
    def _searched_gates(self) -> list[tuple[str, str, Tensor, Tensor | None]]:
        """``(layer, "w" | "a" | "p", gates, probabilities)`` for every gate vector the latest forward used."""
        found = []
        for name in self.space.layer_names:
            layer = self.space.layer(name)
            if layer.mode == "search" and not layer.pinned:
                if layer.search_weight_bits and layer.last_w_gates is not None:
                    found.append((name, "w", layer.last_w_gates, layer.last_w_probs))
                if layer.last_a_gates is not None:
                    found.append((name, "a", layer.last_a_gates, layer.last_a_probs))
            if layer.last_p_gates is not None:
                found.append((name, "p", layer.last_p_gates, None))
        return found

    @staticmethod
    def _gate_values(gates: list[tuple[str, str, Tensor, Tensor | None]]) -> dict[tuple[str, str], list[float]]:
        """Hard gates under ``(layer, kind)``, probabilities under ``(layer, kind + "_prob")``."""
        # One device-to-host copy for all gates: on a GPU, one synchronisation per step.
        if not gates:
            return {}
        parts, keys = [], []
        for name, kind, g, probs in gates:
            parts.append(g.detach().reshape(-1).float())
            keys.append(((name, kind), g.numel()))
            if probs is not None:
                parts.append(probs.detach().reshape(-1).float())
                keys.append(((name, kind + "_prob"), probs.numel()))
        flat = torch.cat(parts).cpu().tolist()
        out, i = {}, 0
        for key, n in keys:
            out[key] = flat[i : i + n]
            i += n
        return out

    def _states_from(self, values: dict[tuple[str, str], list[float]]) -> dict[str, LayerState]:
        kept_out: dict[str, int] = {}
        self._group_bits, self._pruned = {}, {}

        def out_channels(name: str) -> int:
            if name not in kept_out:
                if name in self._depthwise:
                    kept_out[name] = out_channels(self._kept_in_source[name])
                elif (name, "p") in values:
                    sizes = self.space.layer(name).group_sizes()
                    kept_out[name] = sum(s for s, v in zip(sizes, values[(name, "p")]) if v > 0.5)
                else:
                    kept_out[name] = self.space.shapes[name].out_channels
            return kept_out[name]

        states = {}
        for name in self.space.layer_names:
            layer = self.space.layer(name)
            src = self._kept_in_source.get(name)
            kin = self.space.shapes[name].in_channels if src is None else out_channels(src)
            w = (
                bits_from_gates(layer.bits, [v > 0.5 for v in values[(name, "w")]])
                if (name, "w") in values
                else layer.fixed_w_bits
            )
            a = (
                bits_from_gates(layer.bits, [v > 0.5 for v in values[(name, "a")]])
                if (name, "a") in values
                else layer.fixed_a_bits
            )
            states[name] = LayerState(w, a, kin, out_channels(name))
            if layer.channel_bits and (name, "w") in values:  # one width per output-channel group
                states[name] = self._mixed(name, values, states[name])
        return states

    def _mixed(self, name: str, values: dict[tuple[str, str], list[float]], base: LayerState) -> LayerState:
        layer = self.space.layer(name)
        gb = group_bits_from(layer.bits, values[(name, "w")], layer.num_groups)
        source = self._kept_in_source[name] if name in self._depthwise else name  # whose gates remove its rows
        groups = [i for i, v in enumerate(values.get((source, "p"), [])) if v <= 0.5]
        size, out = layer.group_size, self.space.shapes[name].out_channels
        pruned = [c for g in groups for c in range(g * size, min((g + 1) * size, out))]
        self._group_bits[name], self._pruned[name] = gb, pruned
        return mixed_state(gb, size, out, pruned, base)

    def _state_cost(self, name: str, st: LayerState) -> float:
        if name in self._group_bits:  # the whole state: its channel-wise widths too
            return float(self.cost_model.cached_layer_cost(self.space.shapes[name], st, self.batch))
        return self._layer_cost(self.space.shapes[name], st.w_bits, st.a_bits, st.kept_in, st.kept_out)

    def _choice_from(self, values: dict[tuple[str, str], list[float]], states: dict[str, LayerState]) -> Choice:
        bits = tuple((n, self._group_bits.get(n, states[n].w_bits), states[n].a_bits) for n in self.space.layer_names)
        pruned = tuple(
            (g.producer, tuple(i for i, v in enumerate(values.get((g.producer, "p"), [])) if v <= 0.5))
            for g in self.space.groups
        )
        return bits, pruned

    def current_states(self) -> dict[str, LayerState]:
        """Each layer's discrete state as of the last forward."""
        return self._states_from(self._gate_values(self._searched_gates()))

    # ------------------------------------------------------------------ the term
    def __call__(self) -> Tensor:
        """Total cost (float64, on the CPU) for the latest forward, differentiable w.r.t. gates.

        The cost is multilinear in the hard gates, so it equals
        ``R(state) + sum_j (g_j - sg(g_j)) * dR/dg_j`` with ``dR/dg_j`` the cost difference when
        gate ``j`` flips (its expectation where that is zero, see the module docstring). The
        differences are plain floats from the memoised cost model, and the whole term is one dot
        product in the autograd graph, however deep the model.
        """
        gates = self._searched_gates()
        values = self._gate_values(gates)
        states = self._states_from(values)
        self.last_choice = self._choice_from(values, states)
        total = 0.0
        for n in self.space.layer_names:
            total += self._state_cost(n, states[n])
        deltas: list[float] = []
        for name, kind, _, _ in gates:
            if kind == "p":
                deltas.extend(self._channel_deltas(name, values[(name, "p")], states))
            else:
                deltas.extend(self._bit_deltas(name, kind, values, states[name]))
        value = torch.tensor(float(total), dtype=torch.float64)
        if not gates:
            return value
        flat = torch.cat([g.reshape(-1) for _, _, g, _ in gates]).to("cpu", torch.float64)
        return value + ((flat - flat.detach()) * torch.tensor(deltas, dtype=torch.float64)).sum()

    def _bit_deltas(
        self, name: str, kind: str, values: dict[tuple[str, str], list[float]], st: LayerState
    ) -> list[float]:
        """``dR/dg_j`` for one layer's nested weight (``"w"``) or activation (``"a"``) gates."""
        if name in self._group_bits:
            return self._channel_bit_deltas(name, kind, values, st)
        layer = self.space.layer(name)
        bits = layer.bits
        shape = self.space.shapes[name]
        gate_values = values[(name, kind)]

        def cost(w: int, a: int) -> float:
            return self._layer_cost(shape, w, a, st.kept_in, st.kept_out)

        out = []
        for j in range(len(gate_values)):
            costs = []
            for flipped in (1.0, 0.0):
                chosen = bits_from_gates(bits, [(flipped if i == j else v) > 0.5 for i, v in enumerate(gate_values)])
                w, a = (chosen, st.a_bits) if kind == "w" else (st.w_bits, chosen)
                costs.append(cost(w, a))
            delta = costs[0] - costs[1]
            if delta == 0.0:  # flat at the hard state: look at joint moves (module docstring)
                delta = expected_flip_difference(
                    cost,
                    bits,
                    kind,
                    j,
                    values.get((name, "w_prob")),
                    values.get((name, "a_prob")),
                    layer.fixed_w_bits,
                    layer.fixed_a_bits,
                )
            out.append(delta)
        return out

    def _channel_bit_deltas(
        self, name: str, kind: str, values: dict[tuple[str, str], list[float]], st: LayerState
    ) -> list[float]:
        """The bit gates' ``dR/dg`` of a channel-wise layer (see :mod:`hwsbs.sbs.channel_cost`)."""
        layer, shape = self.space.layer(name), self.space.shapes[name]
        pruned = self._pruned[name]

        def cost(group_bits: tuple[int, ...], a: int) -> float:
            state = mixed_state(group_bits, layer.group_size, shape.out_channels, pruned, replace(st, a_bits=a))
            return float(self.cost_model.cached_layer_cost(shape, state, self.batch))

        gb, w_probs, a_probs = self._group_bits[name], values.get((name, "w_prob")), values.get((name, "a_prob"))
        if kind == "w":
            sizes = layer.group_sizes()
            shares = [s / sum(sizes) for s in sizes]
            return channel_weight_deltas(cost, layer.bits, gb, values[(name, "w")], w_probs, a_probs, st.a_bits, shares)
        a_gates = values[(name, "a")]
        return [
            channel_act_delta(cost, layer.bits, gb, j, a_gates, a_probs, w_probs, layer.fixed_a_bits)
            for j in range(len(a_gates))
        ]

    def _flip_delta(self, name: str, st: LayerState, d_in: int, d_out: int, group: int = -1) -> float:
        """Cost change of layer ``name`` when its kept channels change by (d_in, d_out) (a channel-wise
        layer: output group ``group`` removed or restored, at its own width)."""
        if name in self._group_bits:
            return self._mixed_flip_delta(name, st, d_in, d_out, group)
        shape = self.space.shapes[name]
        kin, kout = st.kept_in + d_in, st.kept_out + d_out
        if kin <= 0 or kout <= 0:
            return self._layer_cost(shape, st.w_bits, st.a_bits, st.kept_in, st.kept_out)
        return self._layer_cost(shape, st.w_bits, st.a_bits, st.kept_in, st.kept_out) - self._layer_cost(
            shape, st.w_bits, st.a_bits, kin, kout
        )

    def _mixed_flip_delta(self, name: str, st: LayerState, d_in: int, d_out: int, group: int) -> float:
        kin, kout = st.kept_in + d_in, st.kept_out + d_out
        if kin <= 0 or kout <= 0:
            return self._state_cost(name, st)
        layer, out = self.space.layer(name), self.space.shapes[name].out_channels
        pruned = set(self._pruned[name])
        if d_out:
            lo = group * layer.group_size
            channels = set(range(lo, min(lo + layer.group_size, out)))
            pruned = pruned - channels if d_out > 0 else pruned | channels
        new = mixed_state(
            self._group_bits[name], layer.group_size, out, sorted(pruned), replace(st, kept_in=kin, kept_out=kout)
        )
        return self._state_cost(name, st) - self._state_cost(name, new)

    def _channel_deltas(self, producer: str, gate_values: list[float], states: dict[str, LayerState]) -> list[float]:
        """``dR/dg_c`` per channel group: the cost of the group, for the producer and every layer
        whose input (or depthwise channels) it feeds."""
        sizes = self.space.layer(producer).group_sizes()
        cache: dict[tuple[int, bool, int], float] = {}
        out = []
        mixed = any(n in self._group_bits for n in (producer, *self._consumers_of.get(producer, [])))
        for index, (size, gate) in enumerate(zip(sizes, gate_values)):
            kept = gate > 0.5
            key = (size, kept, index) if mixed else (size, kept, -1)  # channel-wise: groups differ in width
            if key not in cache:
                step = -size if kept else size  # flipping a kept group removes it, a pruned one adds it
                delta = self._flip_delta(producer, states[producer], 0, step, index)
                for other in self._consumers_of.get(producer, []):
                    d_out = step if other in self._depthwise else 0
                    delta += self._flip_delta(other, states[other], step, d_out, index)
                cache[key] = delta if kept else -delta  # d cost / d g in both cases
            out.append(cache[key])
        return out
