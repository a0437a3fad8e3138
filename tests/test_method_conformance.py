"""Every registered search method passes the method conformance suite (hwsbs.testing)."""

from __future__ import annotations

import pytest

from hwsbs.errors import ConfigError
from hwsbs.methods import list_methods, register_method
from hwsbs.methods.base import _METHODS
from hwsbs.sbs.config_io import LayerDecision
from hwsbs.testing import ConformanceError, check_search_method


@pytest.mark.parametrize("name", list_methods())
def test_every_registered_method_conforms(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = check_search_method(name, tmp_path, extra={"candidates": 3, "trials": 3})
    assert config.layers


def test_a_method_that_breaks_its_promise_is_caught(tmp_path, monkeypatch):
    """A method that claims to meet targets but returns uniform 8-bit fails the suite."""
    monkeypatch.chdir(tmp_path)

    def liar(ctx):
        return ctx.make_config([LayerDecision(ctx.space.shapes[n], 8, 8) for n in ctx.space.layer_names])

    register_method("test-liar", prunes=False, description="claims budgets, ignores them", meets_target=True)(liar)
    try:
        with pytest.raises(ConformanceError, match="over the reachable target"):
            check_search_method("test-liar", tmp_path)
    finally:
        _METHODS.pop("test-liar")


def test_unknown_method_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown method"):
        check_search_method("no-such-method", tmp_path)


def test_declared_needs_are_read_and_checked(tmp_path):
    """APB declares its cost model and 1-bit weights; a malformed declaration is a ConformanceError."""
    from hwsbs.methods import get_method
    from hwsbs.testing import method_needs

    assert method_needs(get_method("apb")) == {"cost": "size", "cost_flag": "prices_apb", "w_bits": (1,)}
    assert method_needs(get_method("sbs")) == {}

    def odd(ctx):
        raise AssertionError("not run")

    odd.conformance = {"costs": "size"}  # type: ignore[attr-defined]
    register_method("test-odd", prunes=False, description="declares an unknown need")(odd)
    try:
        with pytest.raises(ConformanceError, match="conformance: expected a dict"):
            check_search_method("test-odd", tmp_path)
    finally:
        _METHODS.pop("test-odd")
