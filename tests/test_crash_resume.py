"""Crash safety: a search killed with SIGKILL and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import hwsbs_command, tiny_argv

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
    ckpt = killed / "checkpoint.pt"
    deadline = time.time() + 300
    # Kill once the run is inside the search (past at least one search checkpoint).
    while time.time() < deadline:
        if ckpt.exists() and ckpt.stat().st_mtime and (killed / "options.json").exists():
            try:
                phase = torch.load(ckpt, weights_only=True)["phase"]
            except Exception:
                phase = None
            if phase in ("search", "finetune", "done"):
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"

    done = subprocess.run(_cli(killed, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _comparable(killed / "result.json") == _comparable(reference / "result.json")
