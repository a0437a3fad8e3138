"""How much of a model's compute the search quantises and prices, and what stays in float.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per MAC) on one
sample batch, per module: a module's *own* compute is its count minus its children's. Coverage
is the share of all MACs inside the layers hwsbs quantises (searched or pinned); the rest is
named by module and op, so a user sees which part of the model the search did not touch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from cost_models.base import LayerShape
from hwsbs.errors import ModelError

if TYPE_CHECKING:
    from .convert import SearchSpace

__all__ = ["Coverage", "measure_coverage", "check_searchable", "COVERAGE_WARNING"]

#: Below this share of MACs the run warns that much of the model stays in float.
COVERAGE_WARNING = 0.9
_SHOWN = 5  # float compute sites named in one-line messages


@dataclass
class Coverage:
    """The model's MACs per sample batch, the share hwsbs quantises, and what it leaves in float."""

    total_macs: float  # every MAC of one forward on the sample batch
    quantised_macs: float  # MACs inside the layers hwsbs quantises
    float_compute: dict[str, float] = field(default_factory=dict)  # "module (op)" -> MACs left in float

    @property
    def fraction(self) -> float:
        """Quantised share of all MACs, in [0, 1] (1 for a model with no MACs)."""
        return min(self.quantised_macs / self.total_macs, 1.0) if self.total_macs > 0 else 1.0

    def float_names(self) -> list[str]:
        """Float compute sites, the largest first."""
        return sorted(self.float_compute, key=lambda k: -self.float_compute[k])

    def describe_float(self) -> str:
        """``": its compute is a (x%), b (y%)"`` for messages, or ``""`` when nothing is left in float."""
        names = self.float_names()
        if not names:
            return ""
        total = self.total_macs or 1.0
        shown = ", ".join(f"{n} ({100 * self.float_compute[n] / total:.0f}%)" for n in names[:_SHOWN])
        more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
        return f": its compute is {shown}{more}"

    def to_dict(self) -> dict[str, object]:
        return {"coverage": round(self.fraction, 6), "float_compute": self.float_names()}


@torch.no_grad()
def _flop_counts(model: nn.Module, example: Tensor) -> dict[str, dict[str, int]]:
    """FLOPs per module path (``Root.a.b``, ``Global`` for all) and op, one eval forward."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example)
    except Exception:
        return {}  # shape tracing reports the model's own failure with its message
    finally:
        model.train(was_training)
    return {
        k: {str(op).removeprefix("aten."): int(n) for op, n in v.items()} for k, v in counter.get_flop_counts().items()
    }


def _nearest_descendants(name: str, paths: Mapping[str, str]) -> list[str]:
    """Counted modules below ``name`` with no counted module between (containers are never called)."""
    prefix = name + "." if name else ""
    below = {k: n for k, n in paths.items() if n != name and n.startswith(prefix)}
    return [k for k, n in below.items() if not any(n.startswith(m + ".") for m in below.values() if m != n)]


def measure_coverage(model: nn.Module, example: Tensor, shapes: Mapping[str, LayerShape]) -> Coverage:
    """Coverage of the layers named in ``shapes`` (module names in ``model``), before they are wrapped."""
    counts = _flop_counts(model, example)
    total = sum(counts.get("Global", {}).values()) / 2.0
    root = type(model).__name__
    paths = {k: k.removeprefix(root).removeprefix(".") for k in counts if k != "Global"}
    quantised = sum(sum(counts[k].values()) for k, name in paths.items() if name in shapes) / 2.0
    own_float: dict[str, float] = {}
    for key, name in paths.items():
        if name in shapes or any(name.startswith(s + ".") for s in shapes):
            continue
        children = _nearest_descendants(name, paths)
        for op, flops in counts[key].items():
            own = flops - sum(counts[c].get(op, 0) for c in children)
            if own > 0:
                own_float[f"{name or root} ({op})"] = own / 2.0
    return Coverage(total_macs=total, quantised_macs=quantised, float_compute=own_float)


def check_searchable(space: SearchSpace, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The converted model's coverage for result.json; warns when much of its compute stays in float.

    Raises:
        ModelError: every layer found is pinned, so the search would choose nothing.
    """
    coverage = space.coverage
    if all(layer.pinned for _, layer in space.layers()):
        detail = coverage.describe_float() if coverage is not None else ""
        raise ModelError(
            f"nothing to search: the only layers found ({', '.join(space.layer_names)}) are pinned first/last "
            f"layers{detail}; pass --no-pin-first-last or a model with more Conv2d/Linear/attention layers"
        )
    if coverage is None:
        return None
    log(f"coverage: {coverage.fraction:.1%} of the model's MACs are quantised and priced")
    if coverage.fraction < COVERAGE_WARNING:
        warnings.warn(
            f"only {coverage.fraction:.0%} of the model's MACs are searched; left in float{coverage.describe_float()}",
            stacklevel=2,
        )
    return coverage.to_dict()
