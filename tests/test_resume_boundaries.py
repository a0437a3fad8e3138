"""Resuming from every point a run can stop at, and the run directory as a shared resource.

A run killed after the last checkpoint of one phase and before the first of the next resumes to
the result of an uninterrupted run (every phase starts from random state derived from (seed,
phase), whatever ran before it in the process). ``--resume`` refuses an ``options.json`` that is
missing, garbled, or records other options (``--no-prune`` included), with one line and without
writing; two processes cannot work in one run directory at once; a full disk while checkpointing
names the file and leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hwsbs.pipeline as pipeline
import hwsbs.run_state as run_state
from hardware_profiles.checked_io import write_text_atomic
from hwsbs.checkpoint import PID_NAME, RunDirLock, load_checkpoint, save_checkpoint
from hwsbs.cli.main import main
from hwsbs.config import SearchConfig
from hwsbs.errors import CheckpointError, ConfigError
from hwsbs.pipeline import run_search
from tests.helpers import tiny_argv, tiny_schedule

TINY = tiny_schedule(
    subset=256, pretrain_epochs=2, search_epochs=2, cost="bops", hw="a100", threshold_lr=0.2, lam=5.0, seed=3
)
#: a short CLI schedule for the refusals (they fail before any training)
CLI = tiny_argv("search", "--cost", "bops", subset=64, epochs=(1, 1, 0))


class Killed(BaseException):
    """Stands for SIGKILL: nothing in hwsbs catches it."""


def _comparable(run_dir: Path) -> dict:
    data = json.loads((run_dir / "result.json").read_text())
    return {**{k: data[k] for k in ("accuracy", "cost", "layers")}, "config": (run_dir / "config.yaml").read_text()}


def _kill_after_checkpoint(monkeypatch, phase: str, epoch: int) -> None:
    real = pipeline.save_checkpoint

    def save(state, run_dir):
        path = real(state, run_dir)
        if (state["phase"], state["epoch"]) == (phase, epoch):
            raise Killed(f"after the {phase} checkpoint of epoch {epoch}")
        return path

    monkeypatch.setattr(pipeline, "save_checkpoint", save)  # the final checkpoint
    monkeypatch.setattr(run_state, "save_checkpoint", save)  # every epoch's


def _kill_in(monkeypatch, name: str) -> None:
    def boom(*args, **kwargs):
        raise Killed(f"in {name}")

    monkeypatch.setattr(pipeline, name, boom)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    run_search(SearchConfig(**TINY, out=str(out)))
    return _comparable(out)


# (how the run is killed, the checkpoint it leaves)
BOUNDARIES = {
    "pretrain-to-search, after the last pretraining checkpoint": (("checkpoint", "pretrain", 2), ("pretrain", 2)),
    "pretrain-to-search, while converting for the search": (("call", "_convert"), ("pretrain", 2)),
    "search-to-finetune, after the last search checkpoint": (("checkpoint", "search", 2), ("search", 2)),
    "search-to-finetune, before the configuration is applied": (("call", "apply_config"), ("search", 2)),
    "finetune-to-done, after the last fine-tuning checkpoint": (("checkpoint", "finetune", 1), ("finetune", 1)),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(BOUNDARIES))
def test_a_run_killed_at_a_phase_boundary_resumes_to_the_same_result(where, reference, tmp_path, monkeypatch):
    kill, left = BOUNDARIES[where]
    with monkeypatch.context() as m:
        if kill[0] == "checkpoint":
            _kill_after_checkpoint(m, kill[1], kill[2])
        else:
            _kill_in(m, kill[1])
        with pytest.raises(Killed):
            run_search(SearchConfig(**TINY, out=str(tmp_path)))
    ckpt = load_checkpoint(tmp_path)
    assert (ckpt["phase"], ckpt["epoch"]) == left
    assert not (tmp_path / "result.json").exists() and not (tmp_path / PID_NAME).exists()
    torch.manual_seed(12345)  # whatever state the process is in, the resumed run must not depend on it
    run_search(SearchConfig(**TINY, out=str(tmp_path), resume=True))
    assert _comparable(tmp_path) == reference


# ---------------------------------------------------------------------------------------------
# options.json on --resume: missing, garbled, other options


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")]}


def _refused(argv: list[str], capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hwsbs search: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "--resume {d}: options.json not found, so the options of that run are unknown"),
        ("{not json", "{d}/options.json: invalid JSON: "),
        ("[1, 2]", "{d}/options.json: expected a JSON object (the run's options), got list"),
        ("", "{d}/options.json: invalid JSON: "),
    ],
)
def test_resume_refuses_missing_or_garbled_options(content, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "options.json").write_text(content, encoding="utf-8")
    before = _snapshot(tmp_path)
    line = _refused([*CLI, "--out", str(run), "--resume"], capsys)
    assert needle.format(d=run) in line
    assert _snapshot(tmp_path) == before  # nothing written, not even a lock or pid file


def test_a_no_prune_run_does_not_resume_as_a_pruning_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, "pretrain", 1)
        with pytest.raises(Killed):
            main([*CLI, "--out", str(run), "--no-prune"])
    assert json.loads((run / "options.json").read_text())["prune"] is False
    before = _snapshot(tmp_path)
    line = _refused([*CLI, "--out", str(run), "--resume"], capsys)
    assert f"--resume {run}: option prune was False in that run, now True" in line
    assert _snapshot(tmp_path) == before
    # an options.json of an older hwsbs that did not record prune: only the default is accepted
    options = json.loads((run / "options.json").read_text())
    del options["prune"]
    (run / "options.json").write_text(json.dumps(options), encoding="utf-8")
    line = _refused([*CLI, "--out", str(run), "--resume", "--no-prune"], capsys)
    assert f"option prune is not recorded in {run}/options.json (that run used the default True), now False" in line
    options["prune"] = False
    (run / "options.json").write_text(json.dumps(options), encoding="utf-8")
    assert main([*CLI, "--out", str(run), "--resume", "--no-prune"]) == 0
    capsys.readouterr()
    assert (run / "result.json").is_file()


# ---------------------------------------------------------------------------------------------
# One process per run directory


def test_run_dir_lock_is_exclusive_and_leaves_nothing(tmp_path):
    before = _snapshot(tmp_path)
    with RunDirLock(tmp_path):
        assert _snapshot(tmp_path) == before  # taking the lock writes nothing
        with pytest.raises(ConfigError, match=r"in use by another hwsbs process \(pid not recorded yet\)"):
            RunDirLock(tmp_path).acquire()
    with RunDirLock(tmp_path) as lock:  # released: free again
        lock.record_pid()
        assert (tmp_path / PID_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(
            ConfigError, match=rf"--out {tmp_path}: in use by another hwsbs process \(pid {os.getpid()}\)"
        ):
            RunDirLock(tmp_path).acquire()
    assert not (tmp_path / PID_NAME).exists()


@pytest.mark.timeout(300)
def test_a_second_process_cannot_resume_a_run_in_use(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom hwsbs.checkpoint import RunDirLock\nlock = RunDirLock(sys.argv[1])\n"
            "lock.acquire()\nlock.record_pid()\nprint('locked', flush=True)\ntime.sleep(300)\n",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(tmp_path)
        for extra in (["--resume"], []):  # resuming, or starting a run in a directory in use
            line = _refused([*CLI, "--out", str(run), *extra], capsys)
            assert f"--out {run}: in use by another hwsbs process (pid {holder.pid}); wait for it to finish" in line
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait(timeout=60)
    RunDirLock(run).acquire()  # the kernel released the dead holder's lock


# ---------------------------------------------------------------------------------------------
# A full disk while checkpointing


def _enospc_after_writing(obj, fh, *args, **kwargs):
    fh.write(b"partial checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    save_checkpoint(
        {"phase": "pretrain", "epoch": 1, "model": {}, "optim": {"optimizer": {}, "scheduler": {}}}, tmp_path
    )
    monkeypatch.setattr(torch, "save", _enospc_after_writing)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"phase": "pretrain", "epoch": 2, "model": {}, "optim": {}}, tmp_path)
    assert str(info.value) == f"{tmp_path}/checkpoint.pt: cannot write checkpoint (No space left on device)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no .tmp
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["epoch"] == 1  # the previous checkpoint is intact

    def stream_writer_fails(obj, fh, *args, **kwargs):  # how torch itself reports a failed write(2)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", stream_writer_fails)
    with pytest.raises(
        CheckpointError, match=r"checkpoint.pt: cannot write checkpoint \(torch.save: .*file write failed\)"
    ):
        save_checkpoint({"phase": "pretrain", "epoch": 2, "model": {}, "optim": {}}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_during_a_search_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _enospc_after_writing)
    line = _refused([*CLI, "--out", str(run)], capsys)
    assert line == f"hwsbs search: error: {run}/checkpoint.pt: cannot write checkpoint (No space left on device)"
    assert sorted(p.name for p in run.iterdir()) == ["options.json"]  # no .tmp, no pid file, no checkpoint


def test_options_json_is_written_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    line = _refused([*CLI, "--out", str(run)], capsys)
    assert line == f"hwsbs search: error: {run}/options.json: cannot write run options (No space left on device)"
    assert list(run.iterdir()) == []
    path = tmp_path / "kept.json"
    path.write_text('{"old": true}')
    with pytest.raises(ConfigError, match="kept.json: cannot write file"):
        write_text_atomic(path, '{"new": true}')
    assert path.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", "run"]
