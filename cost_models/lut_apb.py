"""APB layers in a measured table: latency interpolated in the share of full-precision weights.

``hwsbs lut build --apb`` times every conv/linear signature as an APB layer (binary weights on the
bitwise kernel plus a CSR outlier GEMM, :class:`hwsbs.export.apb.APBKernelLayer`) at a few
outlier shares and stores them in the table's optional ``apb`` section
(:class:`~hardware_profiles.lut_table.LutAPBEntry`). The ``lut`` cost model prices a layer with
``state.fp_weights >= 0`` here:

* the curve of one (signature, a_bits, batch) is made non-decreasing in the share (pool adjacent
  violators: more outliers never make the kernel faster, and the APB search follows the slope);
* the layer's share ``fp_weights / weights`` is interpolated linearly between measured shares and
  extrapolated with the last segment's slope beyond the largest (the sparse part is linear in
  the outlier count), held flat below the smallest;
* activation bits: the measured width, else the narrowest wider one (more bit planes cost more);
* batch: the measured batch closest below, scaled linearly; kept channels other than the measured
  ones: scaled by the MAC ratio.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

from hardware_profiles.lut_table import LookupTable, LutAPBEntry

from .base import LayerShape, LayerState
from .errors import CostModelError

__all__ = ["APBCurve", "APBPricer", "monotone_fit"]


def monotone_fit(values: list[float]) -> list[float]:
    """The least-squares non-decreasing fit of ``values`` (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    out: list[float] = []
    for mean, count in blocks:
        out += [mean] * int(count)
    return out


@dataclass(frozen=True)
class APBCurve:
    """Measured latency of one APB layer over the outlier share (shares ascending)."""

    shares: tuple[float, ...]
    mean: tuple[float, ...]  # non-decreasing (monotone_fit of the medians)
    std: tuple[float, ...]
    kept_in: int
    kept_out: int
    batch: int

    @classmethod
    def from_entries(cls, entries: list[LutAPBEntry]) -> APBCurve:
        """The curve of entries of one signature, activation width and batch (full channels first)."""
        full = max((e.kept_in * e.kept_out, e.kept_in, e.kept_out) for e in entries)
        chosen = sorted((e for e in entries if (e.kept_in, e.kept_out) == full[1:]), key=lambda e: e.fp_share)
        means = monotone_fit([e.mean_s for e in chosen])
        return cls(
            tuple(e.fp_share for e in chosen),
            tuple(means),
            tuple(e.std_s for e in chosen),
            full[1],
            full[2],
            chosen[0].batch,
        )

    def at(self, share: float) -> tuple[float, float]:
        """(mean, std) at ``share``: linear between measured shares, the last slope beyond them."""
        xs = self.shares
        if len(xs) == 1 or share <= xs[0]:
            return self.mean[0], self.std[0]
        if share >= xs[-1]:
            lo, hi = len(xs) - 2, len(xs) - 1
        else:
            hi = bisect.bisect_right(xs, share)
            lo = hi - 1
        t = (share - xs[lo]) / (xs[hi] - xs[lo])
        mean = self.mean[lo] + t * (self.mean[hi] - self.mean[lo])
        std = self.std[lo] + min(t, 1.0) * (self.std[hi] - self.std[lo])
        return mean, max(std, 0.0)


class APBPricer:
    """The APB part of a :class:`~cost_models.lut.LutCostModel`'s table."""

    def __init__(self, table: LookupTable, where: str) -> None:
        self.where = where
        grouped: dict[str, dict[tuple[int, int], list[LutAPBEntry]]] = defaultdict(lambda: defaultdict(list))
        for e in table.apb:
            grouped[e.signature][(e.a_bits, e.batch)].append(e)
        self._curves = {
            sig: {key: APBCurve.from_entries(entries) for key, entries in by_key.items()}
            for sig, by_key in grouped.items()
        }

    @property
    def available(self) -> bool:
        """True when the table has APB entries (the cost model then declares ``prices_apb``)."""
        return bool(self._curves)

    def _curve(self, shape: LayerShape, a_bits: int, batch: int) -> APBCurve:
        curves = self._curves.get(shape.signature)
        if curves is None:
            if not self._curves:
                raise CostModelError(
                    f"{self.where}: the table has no APB entries (layer {shape.name!r}); measure them with "
                    "hwsbs lut build --apb, or price APB layers with --cost size or apb_cpu"
                )
            raise CostModelError(
                f"{self.where}: no APB entry for layer {shape.name!r} (signature {shape.signature}); measure it "
                "with hwsbs lut build --apb"
            )
        widths = sorted({a for a, _ in curves})
        wider = [a for a in widths if a >= a_bits]
        if not wider:
            measured = ", ".join(map(str, widths))
            raise CostModelError(
                f"{self.where}: no APB entry for layer {shape.name!r} at {a_bits}-bit activations or wider "
                f"(measured: {measured})"
            )
        a = wider[0]
        batches = sorted(b for w, b in curves if w == a)
        below = [b for b in batches if b <= batch]
        return curves[(a, below[-1] if below else batches[0])]

    def spread(self, shape: LayerShape, state: LayerState, batch: int = 1) -> tuple[float, float]:
        """(mean, std) latency in seconds of APB layer ``shape`` with ``state.fp_weights`` outliers.

        Raises:
            CostModelError: the table has no APB entry for the layer (one line naming it).
        """
        curve = self._curve(shape, state.a_bits, batch)
        weights = max(shape.weight_count(state.kept_in, state.kept_out), 1)
        mean, std = curve.at(max(state.fp_weights, 0) / weights)
        scale = batch / curve.batch
        measured = shape.macs(curve.kept_in, curve.kept_out)
        if measured > 0:
            scale *= shape.macs(state.kept_in, state.kept_out) / measured
        return mean * scale, std * scale
