"""Crash safety: a search killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import hwsbs_command, tiny_argv, wait_until_past_search_checkpoint

ARGS = tiny_argv(
    "search", "--cost", "bops", "--lambda", "5", "--threshold-lr", "0.2", "--seed", "3", subset=768, epochs=(2, 4, 2)
)


def _cli(out: Path, *extra: str) -> list[str]:
    return hwsbs_command(*ARGS, "--out", str(out), *extra)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # identical kernels (and reduction orders) in both runs
    return env


def _comparable(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("accuracy", "cost", "layers")}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference), check=True, env=_env(), capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_past_search_checkpoint(killed)  # kill once the run is inside the search
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"

    done = subprocess.run(_cli(killed, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _comparable(killed / "result.json") == _comparable(reference / "result.json")
