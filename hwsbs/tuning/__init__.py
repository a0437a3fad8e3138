"""Optuna tuning of the SBS search's outer hyperparameters (``hwsbs tune``, ``pareto``, ``report``).

Python API::

    from hwsbs.config import SearchConfig
    from hwsbs.pipeline import Objective
    from hwsbs.tuning import StudySettings, run_study, collect, write_report

    run = run_study(StudySettings(SearchConfig(search_epochs=3), [Objective("a100")], n_trials=20,
                                  target="30%"))
    report = collect(run.study)
    write_report(report, run.out_dir)
"""

from __future__ import annotations

from hwsbs.tuning import report
from hwsbs.tuning.report import *  # noqa: F403  (the report's whole API: its records, front and hypervolume)
from hwsbs.tuning.samplers import make_sampler
from hwsbs.tuning.space import TuningSpace
from hwsbs.tuning.storage import load_study, open_storage
from hwsbs.tuning.study import StudyRun, StudySettings, run_study

__all__ = ["TuningSpace", "StudySettings", "StudyRun", "run_study", "load_study", "open_storage", "make_sampler"]
__all__ += report.__all__
