"""Conformance checks every cost model should pass, built-in or plugin.

Use them either as one call in any test::

    from hwsbs.testing import check_cost_model
    check_cost_model(MyCostModel(profile))

or by subclassing :class:`CostModelConformance` in a test module (pytest collects the subclass)::

    class TestMyCostModel(CostModelConformance):
        def make_cost_model(self):
            return MyCostModel(load_profile("a100"))

A failed check raises :class:`ConformanceError` (an ``AssertionError``) naming the model, the
layer and the state that broke it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

from cost_models.base import FLOAT_BITS, CostModel, LayerShape, LayerState

__all__ = [
    "DEFAULT_BITS",
    "ConformanceError",
    "default_shapes",
    "kept_counts",
    "check_declarations",
    "check_finite_non_negative",
    "check_deterministic",
    "check_monotone_bits",
    "check_monotone_channels",
    "check_cost_model",
    "CostModelConformance",
]

#: Bit widths the checks sweep for weights and activations (32 = float).
DEFAULT_BITS: tuple[int, ...] = (1, 2, 3, 4, 8, 16, FLOAT_BITS)

# Relative slack for "non-decreasing": float sums may differ in the last bits.
_REL_TOL = 1e-9


class ConformanceError(AssertionError):
    """A cost model broke one of the conformance rules."""


def default_shapes() -> list[LayerShape]:
    """A small zoo covering what cost models must handle: 3x3 and 1x1 convs, a strided conv,
    a depthwise conv, a grouped conv, a first layer with 3 input channels, and two Linears."""
    return [
        LayerShape("stem", "conv", 3, 16, (3, 3), (1, 1), 1, (32, 32), (32, 32)),
        LayerShape("conv3x3", "conv", 64, 64, (3, 3), (1, 1), 1, (16, 16), (16, 16)),
        LayerShape("down1x1", "conv", 64, 128, (1, 1), (2, 2), 1, (16, 16), (8, 8)),
        LayerShape("depthwise", "conv", 96, 96, (3, 3), (1, 1), 96, (14, 14), (14, 14)),
        LayerShape("grouped", "conv", 64, 64, (3, 3), (1, 1), 4, (8, 8), (8, 8)),
        LayerShape("fc", "linear", 512, 100),
        LayerShape("tokens", "linear", 256, 256, out_size=(49, 1)),
    ]


def kept_counts(channels: int) -> list[int]:
    """A few increasing kept-channel counts from 1 to ``channels``."""
    return sorted({1, max(1, channels // 4), max(1, channels // 2), max(1, channels - 1), channels})


def _full_state(shape: LayerShape, w: int, a: int) -> LayerState:
    return LayerState(w, a, shape.in_channels, shape.out_channels)


def _cost(model: CostModel, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
    try:
        value = model.layer_cost(shape, state, batch)
    except Exception as exc:
        raise ConformanceError(
            f"{type(model).__name__}: layer_cost({shape.name}, {state}, batch={batch}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, int | float):
        raise ConformanceError(f"{type(model).__name__}: layer_cost returned {type(value).__name__}, expected float")
    return float(value)


def _not_less(later: float, earlier: float) -> bool:
    return later >= earlier - _REL_TOL * max(abs(earlier), abs(later))


def check_declarations(model: CostModel) -> None:
    """``name``, ``metric`` and ``unit`` are non-empty strings and ``monotone`` is a bool."""
    cls = type(model).__name__
    for attr in ("name", "metric", "unit"):
        value = getattr(model, attr, None)
        if not isinstance(value, str) or not value:
            raise ConformanceError(f"{cls}: class attribute {attr!r} must be a non-empty string, got {value!r}")
    if not isinstance(model.monotone, bool):
        raise ConformanceError(f"{cls}: class attribute 'monotone' must be a bool, got {model.monotone!r}")


def check_finite_non_negative(
    model: CostModel, shapes: Sequence[LayerShape], bits: Iterable[int] = DEFAULT_BITS, batches: Iterable[int] = (1, 4)
) -> None:
    """Every layer cost is a finite number >= 0, and a whole model's cost too."""
    bits = tuple(bits)
    for shape in shapes:
        for batch in batches:
            for w in bits:
                for a in bits:
                    value = _cost(model, shape, _full_state(shape, w, a), batch)
                    if not math.isfinite(value) or value < 0:
                        raise ConformanceError(
                            f"{type(model).__name__}: {shape.name} at {w}/{a} bits, batch {batch}: cost {value} "
                            "is not a finite non-negative number"
                        )
    total = model.model_cost(list(shapes), [_full_state(s, 8, 8) for s in shapes])
    if not math.isfinite(total) or total < 0:
        raise ConformanceError(f"{type(model).__name__}: model_cost is {total}, not a finite non-negative number")


def check_deterministic(model: CostModel, shapes: Sequence[LayerShape], bits: Iterable[int] = (2, 8)) -> None:
    """The same arguments give the same cost, cached or not, and model_cost is the layers' sum."""
    bits = tuple(bits)
    for shape in shapes:
        for w in bits:
            state = _full_state(shape, w, w)
            first, second = _cost(model, shape, state), _cost(model, shape, state)
            cached = model.cached_layer_cost(shape, state)
            if not (first == second == cached):
                raise ConformanceError(
                    f"{type(model).__name__}: {shape.name} at {w}/{w} bits gave {first}, {second}, cached {cached}"
                )
    states = [_full_state(s, 4, 8) for s in shapes]
    total = model.model_cost(list(shapes), states)
    summed = sum(_cost(model, s, st) for s, st in zip(shapes, states, strict=True))
    if not math.isclose(total, summed, rel_tol=1e-9, abs_tol=0.0):
        raise ConformanceError(f"{type(model).__name__}: model_cost {total} != sum of layer costs {summed}")


def check_monotone_bits(model: CostModel, shapes: Sequence[LayerShape], bits: Iterable[int] = DEFAULT_BITS) -> None:
    """More weight or activation bits never cost less (batch 1 and 4)."""
    ordered = sorted(set(bits))
    for shape in shapes:
        for batch in (1, 4):
            grid = {(w, a): _cost(model, shape, _full_state(shape, w, a), batch) for w in ordered for a in ordered}
            for w in ordered:
                for lo, hi in zip(ordered, ordered[1:]):
                    for (w1, a1), (w2, a2) in (((w, lo), (w, hi)), ((lo, w), (hi, w))):
                        if not _not_less(grid[(w2, a2)], grid[(w1, a1)]):
                            raise ConformanceError(
                                f"{type(model).__name__}: {shape.name} (batch {batch}) costs {grid[(w2, a2)]} at "
                                f"{w2}/{a2} bits but {grid[(w1, a1)]} at {w1}/{a1} bits: more bits cost less"
                            )


def check_monotone_channels(model: CostModel, shapes: Sequence[LayerShape], bits: Iterable[int] = (2, 8)) -> None:
    """Keeping more input or output channels never costs less; more samples never cost less."""
    for shape in shapes:
        for w in bits:
            ins, outs = kept_counts(shape.in_channels), kept_counts(shape.out_channels)
            for kin in ins:
                costs = [_cost(model, shape, LayerState(w, w, kin, kout)) for kout in outs]
                _check_rising(model, shape, w, costs, [f"kept_in={kin}, kept_out={k}" for k in outs])
            for kout in outs:
                costs = [_cost(model, shape, LayerState(w, w, kin, kout)) for kin in ins]
                _check_rising(model, shape, w, costs, [f"kept_in={k}, kept_out={kout}" for k in ins])
            state = _full_state(shape, w, w)
            costs = [_cost(model, shape, state, b) for b in (1, 2, 8)]
            _check_rising(model, shape, w, costs, ["batch 1", "batch 2", "batch 8"])


def _check_rising(model: CostModel, shape: LayerShape, w: int, costs: list[float], labels: list[str]) -> None:
    for i in range(1, len(costs)):
        if not _not_less(costs[i], costs[i - 1]):
            raise ConformanceError(
                f"{type(model).__name__}: {shape.name} at {w}/{w} bits costs {costs[i]} with {labels[i]} "
                f"but {costs[i - 1]} with {labels[i - 1]}: more work costs less"
            )


def check_cost_model(
    model: CostModel, shapes: Sequence[LayerShape] | None = None, bits: Iterable[int] = DEFAULT_BITS
) -> None:
    """Run every check (the monotonicity checks only when ``model.monotone`` is True).

    Args:
        model: the cost model instance, built with the profile it will be used on.
        shapes: layers to try; :func:`default_shapes` when None.
        bits: bit widths to sweep; :data:`DEFAULT_BITS` when not given.

    Raises:
        ConformanceError: naming the model, the layer, the state and the broken rule.
    """
    shapes = default_shapes() if shapes is None else list(shapes)
    bits = tuple(bits)
    check_declarations(model)
    check_finite_non_negative(model, shapes, bits)
    check_deterministic(model, shapes)
    if model.monotone:
        check_monotone_bits(model, shapes, bits)
        check_monotone_channels(model, shapes)


class CostModelConformance:
    """pytest mix-in: subclass as ``TestSomething`` and implement :meth:`make_cost_model`.

    Override ``shapes`` (layers to try) or ``bits`` (widths to sweep) as class attributes when
    the model only supports some layers, e.g. a lookup table measured for one network.
    """

    shapes: ClassVar[Sequence[LayerShape] | None] = None
    bits: ClassVar[tuple[int, ...]] = DEFAULT_BITS

    def make_cost_model(self) -> CostModel:
        """Return the cost model under test (built with the profile it is meant for)."""
        raise NotImplementedError("subclasses of CostModelConformance implement make_cost_model()")

    def _shapes(self) -> list[LayerShape]:
        return default_shapes() if self.shapes is None else list(self.shapes)

    def test_declarations(self) -> None:
        check_declarations(self.make_cost_model())

    def test_finite_non_negative(self) -> None:
        check_finite_non_negative(self.make_cost_model(), self._shapes(), self.bits)

    def test_deterministic(self) -> None:
        check_deterministic(self.make_cost_model(), self._shapes())

    def test_monotone_in_bits(self) -> None:
        model = self.make_cost_model()
        if not model.monotone:
            _skip(f"{type(model).__name__} declares monotone = False")
        check_monotone_bits(model, self._shapes(), self.bits)

    def test_monotone_in_kept_channels(self) -> None:
        model = self.make_cost_model()
        if not model.monotone:
            _skip(f"{type(model).__name__} declares monotone = False")
        check_monotone_channels(model, self._shapes())


def _skip(reason: str) -> None:
    import pytest  # only the pytest mix-in needs it; hwsbs does not depend on pytest

    pytest.skip(reason)
