"""The Pareto front of a study: non-dominated points and their hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["HV_REFERENCE", "non_dominated", "hypervolume"]

#: Reference point of the hypervolume: (accuracy, cost / uniform 8-bit cost of each profile).
HV_REFERENCE = (0.0, 1.1)


def non_dominated(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the vectors no other vector dominates (all objectives minimised)."""
    keep = []
    for i, v in enumerate(vectors):
        dominated = any(
            all(a <= b for a, b in zip(w, v)) and any(a < b for a, b in zip(w, v))
            for j, w in enumerate(vectors)
            if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        volume, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    pts = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += (upper - p[-1]) * _hv([q[:-1] for q in pts[: i + 1]], ref[:-1])
    return volume


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact volume dominated by ``points`` and bounded by ``reference`` (all minimised).

    Points that do not strictly dominate the reference in every coordinate add nothing.
    """
    ref = tuple(float(r) for r in reference)
    inside = [tuple(float(x) for x in p) for p in points if all(x < r for x, r in zip(p, ref))]
    return _hv(inside, ref) if inside else 0.0
