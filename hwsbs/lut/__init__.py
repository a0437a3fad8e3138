"""Profile your own device: measured lookup tables and a predicted-vs-measured fidelity check."""

from __future__ import annotations

from .builder import LayerJob, MeasureSettings, executed_pairs, measure_jobs, plan_jobs
from .configs import random_config, uniform_config
from .machine import describe_machine, machine_info
from .run import BuildResult, build_profile
from .split import SplitFit, SplitSample, measure_channel_split, split_jobs
from .timing import Timing, fixed_threads, time_callable

__all__ = [
    "BuildResult",
    "LayerJob",
    "MeasureSettings",
    "SplitFit",
    "SplitSample",
    "Timing",
    "build_profile",
    "describe_machine",
    "executed_pairs",
    "fixed_threads",
    "machine_info",
    "measure_channel_split",
    "measure_jobs",
    "plan_jobs",
    "random_config",
    "split_jobs",
    "time_callable",
    "uniform_config",
]
