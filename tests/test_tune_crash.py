"""Crash safety of studies: a worker killed mid-trial loses that trial only; re-running the same
command fails it (heartbeat), keeps every finished trial as it was, and runs just the missing ones.
A short heartbeat (HWSBS_HEARTBEAT_INTERVAL_S / HWSBS_HEARTBEAT_GRACE_S) keeps the waits short."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from hwsbs.cli.main import main
from hwsbs.tuning import load_study
from tests.helpers import hwsbs_command, tiny_argv

HEARTBEAT = {"HWSBS_HEARTBEAT_INTERVAL_S": "1", "HWSBS_HEARTBEAT_GRACE_S": "3"}
TINY = ["--subset", "64", "--pretrain-epochs", "1", "--search-epochs", "1", "--finetune-epochs", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finished(t: FrozenTrial) -> tuple:
    return t.number, t.state, t.params, t.values, t.datetime_complete, t.user_attrs


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_rerun_fails_and_replaces_the_trials_of_dead_workers(backend, request, tmp_path, monkeypatch, capsys):
    for var, value in HEARTBEAT.items():
        monkeypatch.setenv(var, value)
    storage = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    name = f"crash-{uuid.uuid4().hex[:10]}"
    args = [
        "tune",
        "--hw",
        "a100",
        "--cost",
        "bops",
        "--storage",
        storage,
        "--study-name",
        name,
        "--out",
        str(tmp_path / "study"),
        *TINY,
    ]
    assert main([*args, "--trials", "1"]) == 0
    study = load_study(storage, name)
    first = _finished(study.trials[0])
    # worker A died inside trial 1 (heartbeat written); worker B died before trial 2's first heartbeat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats outside Study.optimize, on purpose
        killed = study.ask()
        killed.set_user_attr("run_dir", str(tmp_path / "study" / "trials" / "trial-1"))
        study._storage.record_heartbeat(killed._trial_id)
        study.ask()
    capsys.readouterr()

    assert main([*args, "--trials", "3"]) == 0
    err = capsys.readouterr().err
    study = load_study(storage, name)
    trials = study.trials
    assert _finished(trials[0]) == first
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    assert "no heartbeat for over 3 s" in study.user_attrs["lost:1"]
    assert "before the trial began" in study.user_attrs["lost:2"]
    assert "waiting for trial(s) 1, 2" in err
    assert [line.split(":")[0] for line in err.splitlines() if ": accuracy" in line] == ["trial 3", "trial 4"]
    if backend == "postgres":
        import optuna

        optuna.delete_study(study_name=name, storage=storage)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the worker exited before it could be killed"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_the_study(tmp_path):
    out = tmp_path / "study"
    cmd = hwsbs_command(
        *tiny_argv("tune", "--cost", "bops", "--trials", "3", "--out", str(out), "--seed", "1", epochs=(1, 2, 1))
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", **HEARTBEAT}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(out / "trials" / "trial-1" / "options.json", proc)  # trial 0 done, trial 1 under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "trials" / "trial-1" / "result.json").exists(), "trial 1 finished before the kill"

    storage = f"sqlite:///{out / 'study.db'}"
    before = load_study(storage).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    result0 = (out / "trials" / "trial-0" / "result.json").read_bytes()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    study = load_study(storage)
    trials = study.trials
    assert _finished(trials[0]) == _finished(before[0])  # the finished trial is untouched
    assert (out / "trials" / "trial-0" / "result.json").read_bytes() == result0
    assert trials[1].state == TrialState.FAIL and "no heartbeat" in study.user_attrs["lost:1"]
    assert [t.state for t in trials[2:]] == [TrialState.COMPLETE, TrialState.COMPLETE]  # only the missing two ran
    assert [line.split(":")[0] for line in done.stderr.splitlines() if ": accuracy" in line] == ["trial 2", "trial 3"]
    assert (out / "pareto.json").is_file()
