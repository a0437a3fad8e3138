"""The default run's result is pinned: a refactor must not change what the same seed finds.

The reference (tests/data/reference_default_run.json) is updated only on purpose, when a change
is meant to change results: ``HWSBS_UPDATE_REFERENCE=1 python -m pytest tests/test_reference_result.py``.
Decisions and costs must match exactly; accuracies within a few images (float reductions differ
between CPUs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hwsbs.config import SearchConfig
from hwsbs.pipeline import run_search

REFERENCE = Path(__file__).parent / "data" / "reference_default_run.json"
# The default run (digits, small_cnn, a100, every default option) on a shorter schedule.
SCHEDULE = dict(pretrain_epochs=5, search_epochs=10, finetune_epochs=1, progress=False)


def _summary(result) -> dict:
    return {
        "schedule": SCHEDULE,
        "layers": [
            [d["name"], d["w_bits"], d["a_bits"], d["kept_in_channels"], d["kept_out_channels"]] for d in result.layers
        ],
        "cost": result.cost,
        "accuracy": result.accuracy,
    }


@pytest.mark.slow
def test_default_run_matches_its_reference(tmp_path):
    got = _summary(run_search(SearchConfig(**SCHEDULE, out=str(tmp_path / "run"))))
    if os.environ.get("HWSBS_UPDATE_REFERENCE") == "1":
        REFERENCE.write_text(json.dumps(got, indent=2) + "\n")
    ref = json.loads(REFERENCE.read_text())
    assert got["schedule"] == ref["schedule"]
    assert got["layers"] == ref["layers"]
    for key, value in ref["cost"].items():
        assert got["cost"][key] == pytest.approx(value, rel=1e-9), key
    for key, value in ref["accuracy"].items():
        assert got["accuracy"][key] == pytest.approx(value, abs=0.03), key
