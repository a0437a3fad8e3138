"""Search methods (``--method``): SBS and the baselines it is measured against."""

from __future__ import annotations

from . import apb, ilp, multipath, optuna_search, random_search, sbs, uniform  # noqa: F401  (register)
from .base import MethodContext, SearchMethod, get_method, list_methods, register_method

__all__ = ["MethodContext", "SearchMethod", "get_method", "list_methods", "register_method"]
