"""The example plugin, pip-installed into a scratch directory, is found through the
``hwsbs.cost_models`` entry point: by the registry, by ``hwsbs cost --cost``, and it passes the
conformance mix-in in its own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cost_models import LayerShape
from cost_models.precision import executed_precision
from cost_models.roofline import layer_bytes
from hardware_profiles import load_profile
from hwsbs.sbs.config_io import CompressionConfig, LayerDecision, save_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hwsbs-example-cost-model"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The example installed with pip into a --target directory (no network, no build isolation)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (site / "hwsbs_example_cost_model").is_dir()
    return site


def run_python(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_entry_point_discovery(plugin_site):
    proc = run_python(plugin_site, "-c", "import json, cost_models; print(json.dumps(cost_models.list_cost_models()))")
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout)
    assert "dram_traffic" in names and "roofline" in names


def test_not_found_without_the_plugin():
    proc = subprocess.run(
        [sys.executable, "-c", "import cost_models; print('dram_traffic' in cost_models.list_cost_models())"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.strip() == "False"


def test_hwsbs_cost_uses_the_plugin(plugin_site, tmp_path):
    conv = LayerShape("conv", "conv", 16, 32, (3, 3), (1, 1), 1, (8, 8), (8, 8))
    head = LayerShape("head", "linear", 32, 10)
    config = CompressionConfig(layers=[LayerDecision(conv, 4, 4, pruned_channels=[0, 1]), LayerDecision(head, 8, 8)])
    path = tmp_path / "config.yaml"
    save_config(config, path)
    proc = run_python(
        plugin_site,
        "-m",
        "hwsbs.cli.main",
        "cost",
        "--config",
        str(path),
        "--hw",
        "h100",
        "--cost",
        "dram_traffic",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert (result["cost_model"], result["metric"], result["unit"]) == ("dram_traffic", "dram_traffic", "B")
    h100 = load_profile("h100")
    expected = 0.0
    for d in config.layers:  # the plugin's formula: executed widths (4-bit runs as INT8 on H100)
        ex = executed_precision(h100, d.w_bits, d.a_bits)
        expected += layer_bytes(d.shape, d.state.kept_in, d.state.kept_out, ex.w_bits, ex.a_bits, 1)
    assert result["cost"] == pytest.approx(expected)


def test_plugin_passes_conformance_in_its_own_tests(plugin_site):
    copy = plugin_site.parent / "src"  # run the copy's tests: nothing is written into the repository
    proc = run_python(plugin_site, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(copy / "tests"), cwd=copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout
