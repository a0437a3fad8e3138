"""A run directory's ``options.json``: what a resumed run must agree with."""

from __future__ import annotations

import os
from pathlib import Path

from hardware_profiles.checked_io import read_checked_json
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError

__all__ = ["OPTIONS_NAME", "RESUME_IGNORED", "check_resume_options"]

OPTIONS_NAME = "options.json"
#: Options that may differ between a run and its resumption (where and how it runs, not what).
RESUME_IGNORED = {"resume", "out", "progress", "device", "workers", "compile"}


def check_resume_options(run_dir: Path, cfg: SearchConfig) -> None:
    """The options of the run being resumed (its ``options.json``) must be the ones given now.

    Options an older hwsbs did not record are accepted only at their default value (the value
    that run used). Raises ConfigError naming the file or the option.
    """
    path = run_dir / OPTIONS_NAME
    if not os.path.lexists(path):
        raise ConfigError(
            f"--resume {run_dir}: {OPTIONS_NAME} not found, so the options of that run are unknown; "
            "not a run directory of hwsbs search (start the run again without --resume)"
        )
    saved = read_checked_json(path, "run options file")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object (the run's options), got {type(saved).__name__}")
    now = cfg.to_dict()
    defaults = SearchConfig().to_dict()
    for key, value in now.items():
        if key in RESUME_IGNORED:
            continue
        if key not in saved:
            if value != defaults[key]:
                raise ConfigError(
                    f"--resume {run_dir}: option {key} is not recorded in {path} (that run used the "
                    f"default {defaults[key]!r}), now {value!r}"
                )
        elif saved[key] != value:
            raise ConfigError(f"--resume {run_dir}: option {key} was {saved[key]!r} in that run, now {value!r}")
