"""Name -> cost model class registry (timm style) with entry-point discovery for plugins."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from .base import CostModel
from .errors import CostModelError

if TYPE_CHECKING:
    from hardware_profiles.schema import HardwareProfile

__all__ = ["ENTRY_POINT_GROUP", "register_cost_model", "get_cost_model_class", "list_cost_models", "build_cost_model"]

#: Other installed packages add cost models by declaring entry points in this group.
ENTRY_POINT_GROUP = "hwsbs.cost_models"

_REGISTRY: dict[str, type[CostModel]] = {}
_entry_points_loaded = False


def register_cost_model(name: str) -> Callable[[type[CostModel]], type[CostModel]]:
    """Class decorator registering a :class:`CostModel` under ``name``.

    Registering a name twice replaces the earlier class with a warning, so a plugin can
    deliberately override a built-in.
    """

    def decorator(cls: type[CostModel]) -> type[CostModel]:
        if not (isinstance(cls, type) and issubclass(cls, CostModel)):
            raise TypeError(f"@register_cost_model({name!r}) needs a CostModel subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            warnings.warn(
                f"cost model {name!r} is registered again: {cls.__module__}.{cls.__qualname__} "
                f"replaces {_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}",
                stacklevel=2,
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_entry_points() -> None:
    """Import plugins declared under :data:`ENTRY_POINT_GROUP` (once); their import registers them."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-ins
            warnings.warn(f"cost model plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        if isinstance(obj, type) and issubclass(obj, CostModel) and ep.name not in _REGISTRY:
            register_cost_model(ep.name)(obj)


def list_cost_models() -> list[str]:
    """Sorted names of every registered cost model, plugins included."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_cost_model_class(name: str) -> type[CostModel]:
    """The class registered as ``name``.

    Raises:
        CostModelError: ``unknown cost model 'x'; known: a, b, c``.
    """
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        raise CostModelError(f"unknown cost model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_cost_model(name: str, profile: HardwareProfile | None = None) -> CostModel:
    """Instantiate cost model ``name`` for ``profile`` (its parameters come from the profile)."""
    return get_cost_model_class(name)(profile)
