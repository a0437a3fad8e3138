"""Build the cost model a profile asks for, or the one ``--cost NAME`` overrides it with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hardware_profiles import load_profile

from .base import CostModel
from .registry import build_cost_model

if TYPE_CHECKING:
    from hardware_profiles.schema import HardwareProfile

__all__ = ["default_cost_model_name", "cost_model_for"]


def default_cost_model_name(profile: HardwareProfile) -> str:
    """The name of ``profile``'s default cost model (its ``cost_model.name``)."""
    return profile.cost_model.name


def cost_model_for(profile: HardwareProfile | str | Path, name: str | None = None) -> CostModel:
    """The cost model to use on ``profile``.

    Args:
        profile: a loaded profile, or a built-in name / profile file to load.
        name: a cost model name overriding the profile's default (``--cost NAME``); the model
            then reads the profile's device fields and uses its own defaults for its knobs.

    Raises:
        ProfileError: ``profile`` names no loadable profile.
        CostModelError: unknown model, or the profile lacks what the model needs.
    """
    if isinstance(profile, str | Path):
        profile = load_profile(profile)
    return build_cost_model(name or default_cost_model_name(profile), profile)
