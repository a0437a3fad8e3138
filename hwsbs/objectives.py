"""What a search pays for: hardware profiles, their cost models and the weights of their log-costs."""

from __future__ import annotations

from dataclasses import dataclass

from cost_models import build_cost_model
from cost_models.base import CostModel
from hardware_profiles import HardwareProfile, load_profile
from hwsbs.lut.machine import warn_if_measured_elsewhere

__all__ = ["Objective", "resolve_cost_model"]


@dataclass
class Objective:
    """A (profile, cost model, weight) the search pays for; the first one is the primary."""

    hw: str  # profile name or path
    cost: str | None = None  # cost model override
    weight: float = 1.0  # weight of its log-cost in the loss


def resolve_cost_model(hw: str | HardwareProfile, cost: str | None = None) -> tuple[HardwareProfile, CostModel]:
    """Load a profile and build its default cost model (or ``cost`` instead); warns in one line
    when it is a CPU lookup table measured on another CPU than this one."""
    profile = hw if isinstance(hw, HardwareProfile) else load_profile(hw)
    model = build_cost_model(cost or profile.cost_model.name, profile)
    warn_if_measured_elsewhere(model)
    return profile, model
