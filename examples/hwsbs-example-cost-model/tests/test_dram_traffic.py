"""The plugin passes hwsbs's cost model conformance checks on a few built-in profiles."""

from __future__ import annotations

import pytest

from cost_models import build_cost_model, list_cost_models
from hardware_profiles import load_profile
from hwsbs.testing import CostModelConformance


class TestDramTrafficOnA100(CostModelConformance):
    def make_cost_model(self):
        return build_cost_model("dram_traffic", load_profile("a100"))


class TestDramTrafficWithoutProfile(CostModelConformance):
    def make_cost_model(self):
        return build_cost_model("dram_traffic")


def test_discovered_through_entry_point():
    assert "dram_traffic" in list_cost_models()


@pytest.mark.parametrize("hw", ["h100", "bitfusion", "x86-avx512"])
def test_on_other_devices(hw):
    from hwsbs.testing import check_cost_model

    check_cost_model(build_cost_model("dram_traffic", load_profile(hw)))
