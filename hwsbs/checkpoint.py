"""Atomic run checkpoints (write a sibling, then rename), loaded with ``weights_only=True``.

Every checkpoint read goes through :func:`load_torch_file`: a regular file of at most
:data:`hardware_profiles.checked_io.CHECKPOINT_LIMIT` bytes, unpickled by torch's weights-only unpickler
(tensors and plain data; a refused global is named in the error). What comes back is checked
for the expected layout, and model weights for non-finite values, so a bad file is one
:class:`CheckpointError` naming the file and the entry instead of a crash later.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hardware_profiles.checked_io import (
    CHECKPOINT_LIMIT,
    open_checked,
    read_checked_text,
    write_atomic,
    write_text_atomic,
)
from hwsbs.errors import CheckpointError, ConfigError, HwsbsError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not locked there
    fcntl = None  # type: ignore[assignment]  # the module is optional: None where there is none

__all__ = [
    "CHECKPOINT_NAME",
    "RUN_PHASES",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
    "load_torch_file",
    "load_model_state",
    "check_state_dict",
    "RunDirLock",
    "PID_NAME",
    "LOCK_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: The process id of the process working in a run directory (while it holds the lock).
PID_NAME = "hwsbs.pid"
#: The lock file, only on file systems that cannot lock a directory itself (NFS).
LOCK_NAME = ".hwsbs.lock"
#: The phases a run checkpoint records (``done``: the fine-tuned model of a finished run).
RUN_PHASES = ("pretrain", "search", "finetune", "done")

# Lines of torch's weights-only error that say nothing about the file.
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation", "Re-running")


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Write ``state`` to ``run_dir/checkpoint.pt`` so a crash never leaves a torn file.

    Raises:
        CheckpointError: ``RUN_DIR/checkpoint.pt: cannot write checkpoint (REASON)`` (a full disk,
            a read-only directory); no temporary file is left behind and the old checkpoint stays.
    """
    path = run_dir / CHECKPOINT_NAME

    def write(fh: Any) -> None:
        try:
            torch.save(state, fh)
        except RuntimeError as exc:  # torch's stream writer reports a failed write(2) as RuntimeError
            detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise OSError(errno.EIO, f"torch.save: {detail[:200]}") from None

    return write_atomic(path, write, "checkpoint", CheckpointError)


def _load_problem(exc: BaseException) -> str:
    """What went wrong in ``torch.load``, in one line; a refused pickle global by its full name."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return f"refusing to load global {refused.group(1)} (a checkpoint may hold only tensors and plain data)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(_BOILERPLATE)]
    detail = lines[0][:200] if lines else "truncated or corrupt file"
    return f"{type(exc).__name__}: {detail}"


def load_torch_file(path: str | Path, label: str | None = None, problem: str = "cannot read checkpoint") -> Any:
    """Unpickle a checkpoint with ``weights_only=True`` after checking it is a regular file.

    Args:
        path: the file.
        label: how messages name it (default: the path), e.g. ``--checkpoint FILE``.
        problem: the message's wording for a file torch cannot load.

    Raises:
        CheckpointError: ``LABEL: file not found``, not a regular file, too large, empty, or
            ``LABEL: PROBLEM (DETAIL)`` naming a refused global in full.
    """
    label = str(path) if label is None else label
    with open_checked(path, "file", CHECKPOINT_LIMIT, CheckpointError, label) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise CheckpointError(f"{label}: {problem} (the file is empty)")
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
                warnings.simplefilter("ignore")
                return torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling garbage raises many types (EOFError, UnpicklingError, ...)
            raise CheckpointError(f"{label}: {problem} ({_load_problem(exc)})") from None


def check_state_dict(
    state: Any, label: str, what: str = "a state_dict (a mapping of names to tensors)"
) -> dict[str, torch.Tensor]:
    """``state`` as a state_dict whose floating-point tensors are all finite.

    Raises:
        CheckpointError: ``LABEL: expected WHAT``, or ``LABEL: tensor 'NAME' holds N non-finite
            values (NaN or infinity)``.
    """
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{label}: expected {what}")
    for name, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(f"{label}: tensor {name!r} holds {bad} non-finite value(s) (NaN or infinity)")
    return dict(state)


def _first_non_finite(obj: Any, where: str, depth: int = 0) -> tuple[str, int] | None:
    """``(path, count)`` of the first floating-point tensor with NaN or infinite values in a
    nested structure of mappings, lists and tensors (optimiser and search state)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            bad = int((~torch.isfinite(obj)).sum())
            if bad:
                return where, bad
        return None
    if depth > 32:
        return None
    items = obj.items() if isinstance(obj, Mapping) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}", depth + 1)
        if found is not None:
            return found
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_json_text(state: dict[str, Any], key: str, label: str, types: tuple[type, ...], what: str) -> None:
    """``state[key]``, when present, is JSON text of one of ``types`` (how the pipeline stores it)."""
    if key not in state:
        return
    try:
        ok = isinstance(state[key], str) and isinstance(json.loads(state[key]), types)
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise CheckpointError(f"{label}: {key}: expected the JSON text of {what}")


def _check_phase_and_model(state: Any, label: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A mapping with ``keys``, a known phase and finite model weights."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{label}: expected a run checkpoint (a mapping with {', '.join(keys)}), got {type(state).__name__}"
        )
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{label}: not a run checkpoint: missing {', '.join(missing)}")
    if state["phase"] not in RUN_PHASES:
        raise CheckpointError(f"{label}: phase: expected one of {', '.join(RUN_PHASES)}, got {state['phase']!r}")
    check_state_dict(state["model"], f"{label}: model")
    return state


def _check_run_checkpoint(state: Any, label: str) -> dict[str, Any]:
    """The full layout ``hwsbs.pipeline`` writes and reads back when resuming."""
    _check_phase_and_model(state, label, ("phase", "epoch", "model", "optim"))
    if not isinstance(state["epoch"], int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        raise CheckpointError(f"{label}: epoch: expected an integer >= 0, got {state['epoch']!r}")
    optim = state["optim"]
    needs = ("optimizer", "scheduler") if state["phase"] in ("pretrain", "finetune") else ()
    if not isinstance(optim, dict) or not all(isinstance(optim.get(k), dict) for k in needs):
        raise CheckpointError(
            f"{label}: optim: expected a mapping" + (" with optimizer and scheduler" if needs else "")
        )
    found = _first_non_finite(optim, "optim")
    if found is not None:
        raise CheckpointError(
            f"{label}: {found[0]}: tensor holds {found[1]} non-finite value(s) (NaN or infinity); "
            "the run diverged before this checkpoint, or the file was damaged"
        )
    _check_json_text(state, "history", label, (list,), "a list")
    _check_json_text(state, "budget", label, (dict, type(None)), "a mapping or null")
    for key in ("fp_accuracy", "compressed_accuracy"):
        if state.get(key) is not None and not _is_number(state[key]):
            raise CheckpointError(f"{label}: {key}: expected a finite number, got {state[key]!r}")
    if state["phase"] == "done" and state.get("compressed_accuracy") is None:
        raise CheckpointError(f"{label}: compressed_accuracy: missing in a finished run's checkpoint")
    return state


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint, or None when it has none.

    Raises:
        CheckpointError: a checkpoint that cannot be read or does not have a run checkpoint's
            layout (phase, epoch, model weights, optimiser state), naming the file and the entry.
    """
    path = run_dir / CHECKPOINT_NAME
    if not os.path.lexists(path):
        return None
    return _check_run_checkpoint(load_torch_file(path), str(path))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A full-precision state_dict from ``--checkpoint`` (a plain dict of finite tensors).

    Raises:
        CheckpointError: ``--checkpoint FILE: ...`` for a missing, unreadable or refused file,
            one that is not a state_dict, or a tensor with NaN or infinite values (named).
    """
    label = f"--checkpoint {path}"
    state = load_torch_file(path, label, "not a loadable state_dict")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return check_state_dict(state, label)


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A compressed model's weights: a finished run checkpoint's ``model`` entry, or a plain state_dict.

    Raises:
        CheckpointError: unreadable, a run that has not finished, or not a state_dict of finite tensors.
    """
    label = str(path)
    data = load_torch_file(path, label)
    if isinstance(data, dict) and "phase" in data:
        _check_phase_and_model(data, label, ("phase", "model"))
        if data["phase"] != "done":
            raise CheckpointError(f"{label}: the run stopped in phase {data['phase']!r}; finish it (--resume) first")
        data = data["model"]
    elif isinstance(data, dict) and isinstance(data.get("model"), dict):  # {"model": state_dict, ...}
        data = data["model"]
    return check_state_dict(data, label, "a run checkpoint or a state_dict")


class RunDirLock:
    """An exclusive, non-blocking lock on a run directory, for as long as one process works in it.

    The lock is ``flock`` on the directory itself, so taking it writes nothing (a refused
    ``--resume`` leaves the directory untouched); on file systems that cannot lock a directory
    (NFS emulates ``flock`` with write locks) it falls back to ``flock`` on the lock file
    ``.hwsbs.lock``, which then stays. The kernel releases the lock when the process ends,
    however it ends, so a killed run never leaves a stale lock. :meth:`record_pid` writes the
    holder's pid to ``hwsbs.pid`` (removed on release) for the message a second process gets.

    Raises:
        ConfigError: (on entering) ``--out RUN_DIR: in use by another hwsbs process (pid N); ...``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        self._pid_written = False

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _busy(self) -> ConfigError:
        pid = self._recorded_pid()
        who = f"pid {pid}" if pid is not None else "pid not recorded yet"
        return ConfigError(
            f"--out {self.run_dir}: in use by another hwsbs process ({who}); wait for it to finish, "
            "or choose another --out"
        )

    def _recorded_pid(self) -> int | None:
        path = self.run_dir / PID_NAME
        if not os.path.lexists(path):
            return None
        try:
            pid = int(read_checked_text(path, "pid file", 64).strip())
        except (HwsbsError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # left by a killed run: not the holder
        except (PermissionError, OverflowError, ValueError):
            pass
        return pid

    def _try_lock(self, fd: int) -> bool:
        """Whether ``fd`` could be locked; ConfigError when another process holds it."""
        assert fcntl is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() from None
        except OSError:  # EBADF / ENOLCK / EOPNOTSUPP: this file system cannot lock it
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise ConfigError(f"--out {self.run_dir}: cannot open the run directory ({exc.strerror or exc})") from None
        if self._try_lock(fd):
            return
        try:
            fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # no way to lock here: run unlocked, as before locks existed
        self._try_lock(fd)

    def record_pid(self) -> None:
        """Write this process's pid to ``hwsbs.pid`` (once the run is known to go ahead)."""
        if self._fd is None or self._pid_written:
            return
        try:
            write_text_atomic(self.run_dir / PID_NAME, f"{os.getpid()}\n", "pid file")
        except HwsbsError:  # only for messages: a full disk fails at the next file that matters
            return
        self._pid_written = True

    def release(self) -> None:
        if self._pid_written:
            try:
                os.unlink(self.run_dir / PID_NAME)
            except OSError:
                pass
            self._pid_written = False
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def load_weights_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)``, or a one-line CheckpointError naming ``source`` and the mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{source} does not match the model: {detail[:240]}") from None
