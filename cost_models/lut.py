"""Measured latency lookup table, interpolated linearly over kept channel counts.

Entries are keyed by ``LayerShape.signature``, (w_bits, a_bits) and batch, and for each key form
a grid over kept_in x kept_out (depthwise layers: a line over kept_out). A pruned layer between
grid points is interpolated bilinearly; outside the grid the nearest point is scaled by the MAC
ratio (``outside_grid: proportional``) or used as is (``clamp``). A missing bit pair falls back to
the narrowest measured wider pair when the table says ``fallback: next_wider``. A batch that was
not measured is scaled linearly from the nearest smaller measured batch (the smallest if none).
APB layers (``state.fp_weights >= 0``) are priced from the table's optional ``apb`` section
(:mod:`cost_models.lut_apb`); ``prices_apb`` is True only when the table has one.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

from cost_models.errors import CostModelError
from hardware_profiles.cost_params import LutParams
from hardware_profiles.errors import ProfileError
from hardware_profiles.loader import resolve_lookup_table
from hardware_profiles.lut_table import LookupTable, LutEntry
from hardware_profiles.schema import FLOAT_BITS, HardwareProfile

from .base import CostModel, LayerShape, LayerState
from .channel_split import price_mixed, split_execution
from .lut_apb import APBPricer
from .registry import register_cost_model

__all__ = ["LutCostModel", "Grid"]


@dataclass(frozen=True)
class Grid:
    """Measured (mean, std) over sorted kept_in values x sorted kept_out values."""

    kin: tuple[int, ...]
    kout: tuple[int, ...]
    mean: tuple[tuple[float, ...], ...]  # [i][j] at kin[i], kout[j]
    std: tuple[tuple[float, ...], ...]


def _bracket(xs: tuple[int, ...], x: int) -> tuple[int, int, float]:
    """Indices (lo, hi) around clamped ``x`` and the weight of hi."""
    if len(xs) == 1 or x <= xs[0]:
        return 0, 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 1, len(xs) - 1, 0.0
    hi = bisect.bisect_left(xs, x)
    lo = hi - 1
    return lo, hi, (x - xs[lo]) / (xs[hi] - xs[lo])


def _bilinear(grid: Grid, values: tuple[tuple[float, ...], ...], kin: int, kout: int) -> float:
    i0, i1, ti = _bracket(grid.kin, kin)
    j0, j1, tj = _bracket(grid.kout, kout)
    low = values[i0][j0] * (1 - tj) + values[i0][j1] * tj
    high = values[i1][j0] * (1 - tj) + values[i1][j1] * tj
    return low * (1 - ti) + high * ti


def _build_grid(sig: str, entries: list[LutEntry], depthwise: bool, where: str) -> Grid:
    if depthwise:  # channels are coupled: the line over kept_out is the grid
        by_out = {e.kept_out: e for e in entries}
        kout = tuple(sorted(by_out))
        return Grid((1,), kout, (tuple(by_out[k].mean_s for k in kout),), (tuple(by_out[k].std_s for k in kout),))
    cells = {(e.kept_in, e.kept_out): e for e in entries}
    kin = tuple(sorted({e.kept_in for e in entries}))
    kout = tuple(sorted({e.kept_out for e in entries}))
    for i in kin:
        for j in kout:
            if (i, j) not in cells:
                e0 = entries[0]
                raise CostModelError(
                    f"{where}: entries for {sig} at {e0.w_bits}/{e0.a_bits} bits (batch {e0.batch}) do not form a "
                    f"kept_in x kept_out grid: missing kept_in={i}, kept_out={j}"
                )
    mean = tuple(tuple(cells[(i, j)].mean_s for j in kout) for i in kin)
    std = tuple(tuple(cells[(i, j)].std_s for j in kout) for i in kin)
    return Grid(kin, kout, mean, std)


@register_cost_model("lut")
class LutCostModel(CostModel):
    """Latency in seconds from a measured table (the profile's ``lookup_table``)."""

    metric = "latency"
    unit = "s"
    # Measurements carry noise: a table need not be monotone in bits or channels.
    monotone = False

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        super().__init__(profile)
        prof = self.require_profile()
        self.params = self.profile_params(LutParams)
        try:
            self.table, self.where = resolve_lookup_table(prof)
        except ProfileError as exc:
            raise CostModelError(str(exc)) from None
        self._index: dict[str, dict[tuple[int, int, int], list[LutEntry]]] = defaultdict(lambda: defaultdict(list))
        for e in self.table.entries:
            self._index[e.signature][(e.w_bits, e.a_bits, e.batch)].append(e)
        self._grids: dict[tuple[str, int, int, int, bool], Grid] = {}
        self._pairs: dict[tuple[str, int, int], tuple[int, int]] = {}
        self._apb = APBPricer(self.table, self.where)  # the table's optional APB section (lut_apb)
        self.prices_apb = self._apb.available  # --method apb needs APB entries in the table

    @property
    def lookup_table(self) -> LookupTable:
        """The loaded table."""
        return self.table

    def _pair(self, shape: LayerShape, w: int, a: int) -> tuple[int, int]:
        """The measured (w, a) pair to use for a requested one, per the table's fallback rule."""
        sig = shape.signature
        pairs = sorted({(pw, pa) for (pw, pa, _) in self._index[sig]})
        if (w, a) in pairs:
            return w, a
        if self.table.fallback == "next_wider":
            if w >= FLOAT_BITS or a >= FLOAT_BITS:
                wider = [p for p in pairs if p == (FLOAT_BITS, FLOAT_BITS)] or pairs
                return max(wider, key=lambda p: (p[0] * p[1], p[0] + p[1]))
            covering = [p for p in pairs if p[0] >= w and p[1] >= a]
            if covering:
                return min(covering, key=lambda p: (p[0] * p[1], p[0] + p[1]))
        measured = ", ".join(f"{pw}/{pa}" for pw, pa in pairs)
        raise CostModelError(
            f"{self.where}: no {w}/{a}-bit entry for layer {shape.name!r} (signature {sig}); measured: {measured}; "
            f"fallback is {self.table.fallback!r}"
        )

    def _grid(self, shape: LayerShape, w: int, a: int, batch: int) -> tuple[Grid, int]:
        """The grid for (shape, w, a) at the measured batch closest below ``batch``, and that batch."""
        sig = shape.signature
        batches = sorted(b for (pw, pa, b) in self._index[sig] if (pw, pa) == (w, a))
        below = [b for b in batches if b <= batch]
        measured_batch = below[-1] if below else batches[0]
        key = (sig, w, a, measured_batch, shape.is_depthwise)
        grid = self._grids.get(key)
        if grid is None:
            grid = _build_grid(sig, self._index[sig][(w, a, measured_batch)], shape.is_depthwise, self.where)
            self._grids[key] = grid
        return grid, measured_batch

    def layer_cost_spread(self, shape: LayerShape, state: LayerState, batch: int = 1) -> tuple[float, float]:
        """(mean, std) latency in seconds of ``shape`` in ``state``.

        Raises:
            CostModelError: the table has no entry for the layer's signature (the message names
                it), or none for its bit pair and no fallback.
        """
        if state.fp_weights >= 0:  # an APB layer: its measured curve over the outlier share
            return self._apb.spread(shape, state, batch)
        if state.w_bits_groups:  # the widest group, or one measured sub-layer per width (channel_split)
            mean = price_mixed(self.profile, shape, state, lambda s: self.layer_cost_spread(shape, s, batch)[0])
            parts = state.bit_splits(shape) if split_execution(self.profile) is not None else (state.widest,)
            return mean, sum(self.layer_cost_spread(shape, s, batch)[1] ** 2 for s in parts) ** 0.5
        if shape.signature not in self._index:
            raise CostModelError(
                f"{self.where}: no entry for layer {shape.name!r} (signature {shape.signature}); measure it "
                "into the table or use another cost model (--cost)"
            )
        pair_key = (shape.signature, state.w_bits, state.a_bits)
        pair = self._pairs.get(pair_key)
        if pair is None:
            pair = self._pairs[pair_key] = self._pair(shape, state.w_bits, state.a_bits)
        w, a = pair
        grid, measured_batch = self._grid(shape, w, a, batch)
        # Clamp into the measured grid; depthwise grids have a single kept_in row.
        ci = 1 if shape.is_depthwise else min(max(state.kept_in, grid.kin[0]), grid.kin[-1])
        co = min(max(state.kept_out, grid.kout[0]), grid.kout[-1])
        mean = _bilinear(grid, grid.mean, ci, co)
        std = _bilinear(grid, grid.std, ci, co)
        scale = batch / measured_batch
        if self.params.outside_grid == "proportional":
            if shape.is_depthwise:
                scale *= state.kept_out / co
            else:
                measured_macs = shape.macs(ci, co)
                if measured_macs > 0:
                    scale *= shape.macs(state.kept_in, state.kept_out) / measured_macs
        return mean * scale, std * scale

    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        return self.layer_cost_spread(shape, state, batch)[0]
