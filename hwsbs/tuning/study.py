"""Optuna studies over the SBS search: the trial objective and the run loop (storage: storage.py, samplers: samplers.py).

One trial = one inner :func:`~hwsbs.pipeline.run_search` with sampled outer hyperparameters, its
artefacts in ``<out>/trials/trial-<number>/``. Everything a report needs (accuracy, every cost,
units, paths, failure reasons) is stored in trial user attributes, so ``hwsbs report`` works from
the storage alone. ``n_trials`` is the total for the study: re-running the same command, or
starting several workers on one storage, stops once that many trials exist.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from hwsbs.config import MIN_TARGET_FRACTION, SearchConfig, parse_target
from hwsbs.errors import ConfigError
from hwsbs.pipeline import Objective, resolve_cost_model, run_search
from hwsbs.tuning.attrs import trial_result_attrs, trial_sample_attrs
from hwsbs.tuning.preflight import check_inputs, pretrain_once
from hwsbs.tuning.samplers import SAMPLERS, make_sampler
from hwsbs.tuning.space import TuningSpace
from hwsbs.tuning.storage import STUDY_ATTR, heartbeat_settings, mask_url, open_storage, study_dir_name

__all__ = ["StudySettings", "StudyRun", "run_study", "counted_trials", "STUDY_ATTR", "SAMPLERS"]

_NOT_IN_SIGNATURE = {
    "out",
    "resume",
    "progress",
    "device",
    "workers",
    "hw",
    "cost",
    "target",
    "target_fraction",
    "extra",
}


@dataclass
class StudySettings:
    """Everything one tuning run needs (the CLI builds it from its flags).

    Attributes:
        base: inner-search options; sampled fields are overridden per trial.
        objectives: profiles (and cost models) to pay for; the first is the primary.
        n_trials: total trials the study should hold (counting earlier runs and other workers).
        multi_objective: ``False``: maximise accuracy (``tune``); ``True``: maximise accuracy and
            minimise every objective's cost (``pareto``).
        space: the sampled hyperparameters.
        target: cost budget of the primary objective, absolute or ``"30%"`` of its uniform 8-bit
            cost; trials above it are infeasible (an Optuna constraint).
        inner_budget: also give each inner search the budget (its hinge loss form), so trials
            aim at it; ignored when the space samples ``target_fraction``.
        storage: Optuna storage URL or ``journal:PATH``; default ``sqlite:///<out>/study.db``.
        study_name: default ``<tune|pareto>-<profile>-<cost model>[...]``.
        sampler: ``tpe`` (default), ``nsga2`` or ``random``; seeded from ``base.seed``.
        out: study directory; default the study's stored one, else ``runs/<study name>``.
    """

    base: SearchConfig
    objectives: list[Objective]
    n_trials: int
    multi_objective: bool = False
    space: TuningSpace = field(default_factory=TuningSpace.default)
    target: str | float | None = None
    inner_budget: bool = True
    storage: str | None = None
    study_name: str | None = None
    sampler: str = "tpe"
    out: str | Path | None = None


@dataclass
class StudyRun:
    """A finished :func:`run_study` call."""

    study: optuna.Study
    out_dir: Path
    storage_url: str  # password masked
    new_trials: int  # trials this call ran


def _is_lost(trial: FrozenTrial, study_attrs: dict[str, Any]) -> bool:
    return trial.state == TrialState.FAIL and (
        bool(trial.user_attrs.get("lost")) or f"lost:{trial.number}" in study_attrs
    )


def counted_trials(study: optuna.Study, before: int | None = None) -> int:
    """Trials that count towards ``n_trials``: all but surplus ones and those lost to a dead worker."""
    attrs = study.user_attrs
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if (before is None or t.number < before) and not t.user_attrs.get("surplus") and not _is_lost(t, attrs)
    )


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _signature(
    settings: StudySettings, labels: list[dict[str, Any]], target: tuple[float | None, float | None]
) -> dict[str, Any]:
    sampled = {p.name for p in settings.space.params}
    base = {k: v for k, v in settings.base.to_dict().items() if k not in _NOT_IN_SIGNATURE and k not in sampled}
    return _jsonable(
        {
            "kind": "pareto" if settings.multi_objective else "tune",
            "objectives": labels,
            "target": None
            if target == (None, None)
            else {"absolute": target[0], "fraction": target[1], "inner_budget": settings.inner_budget},
            "space": settings.space.to_dict(),
            "base": base,
        }
    )


def _check_continuation(stored: dict[str, Any], now: dict[str, Any], name: str) -> None:
    for key in ("kind", "objectives", "target", "space", "base"):
        if stored.get(key) == now[key]:
            continue
        if key == "base":
            diff = sorted(
                k for k in set(stored["base"]) | set(now["base"]) if stored["base"].get(k) != now["base"].get(k)
            )
            detail = ", ".join(f"{k}: {stored['base'].get(k)!r} -> {now['base'].get(k)!r}" for k in diff[:3])
        else:
            detail = f"{stored.get(key)!r} -> {now[key]!r}"
        raise ConfigError(
            f"study {name} was started with a different {key} ({detail}); "
            "re-run with the same options, or pass another --study-name"
        )


class _TrialObjective:
    """One trial: sample, run the inner search in its own directory, record everything."""

    def __init__(
        self,
        settings: StudySettings,
        base: SearchConfig,
        labels: list[str],
        out_dir: Path,
        target: tuple[float | None, float | None],
    ) -> None:
        self.settings, self.base, self.labels, self.out_dir, self.target = (settings, base, labels, out_dir, target)
        self.started = 0  # trials this process ran

    def _reporter(self, trial: optuna.Trial) -> Callable[[dict[str, Any]], None] | None:
        """Each search epoch's training accuracy as an intermediate value (single objective only:
        optuna has no intermediate values for multi-objective studies)."""
        if self.settings.multi_objective:
            return None
        step = itertools.count()

        def report(entry: dict[str, Any]) -> None:
            if entry.get("phase") == "search" and isinstance(entry.get("acc"), float):
                trial.report(entry["acc"], next(step))

        return report

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        if counted_trials(trial.study, before=trial.number) >= self.settings.n_trials:
            trial.set_user_attr("surplus", True)  # another worker took the last slot at the same moment
            raise optuna.TrialPruned(f"the study already has {self.settings.n_trials} trials")
        self.started += 1
        run_dir = self.out_dir / "trials" / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            sample = self.settings.space.sample(trial, self.labels)
            for key, value in trial_sample_attrs(
                _jsonable(sample.options), dict(zip(self.labels, sample.weights))
            ).items():
                trial.set_user_attr(key, value)
            cfg = dataclasses.replace(self.base, **sample.options, out=str(run_dir), resume=False)
            objectives = [Objective(o.hw, o.cost, w) for o, w in zip(self.settings.objectives, sample.weights)]
            result = run_search(cfg, objectives=objectives, on_epoch=self._reporter(trial))
            accuracy = float(result.accuracy["compressed"])
            if not math.isfinite(accuracy):
                raise ConfigError(f"compressed accuracy is {accuracy} (empty validation set?)")
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            trial.set_user_attr("lost", True)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {str(exc)[:500]}")
            raise
        costs: dict[str, dict[str, Any]] = {
            self.labels[0]: {**result.cost, "unit": result.unit, "metric": result.metric},
            **result.extra_costs,
        }
        for key, value in trial_result_attrs(result.accuracy, _jsonable(costs)).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("config_path", str(run_dir / "config.yaml"))
        trial.set_user_attr("result_path", str(run_dir / "result.json"))
        absolute, fraction = self.target
        if absolute is not None or fraction is not None:
            # one of the two is set
            budget = absolute if absolute is not None else cast(float, fraction) * result.cost["uniform_8bit"]
            violation = result.cost["compressed"] / budget - 1.0
            trial.set_constraint("cost_budget", violation)
            trial.set_user_attr("budget", budget)
            trial.set_user_attr("constraint", violation)
        if not self.settings.multi_objective:
            return accuracy
        return (accuracy, *(float(costs[label]["compressed"]) for label in self.labels))


def _default_name(kind: str, labels: list[str]) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join([kind, *labels]))


def _fail_lost_trials(study: optuna.Study, grace: int) -> None:
    """Mark the RUNNING trials of dead workers FAIL (and lost, so that they are replaced).

    Optuna fails trials whose heartbeat is older than the grace period; a worker killed between
    creating a trial and its first heartbeat leaves one without any, recognised here as a trial
    that never reached the objective (no ``run_dir``) for longer than the grace period.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        fail_stale_trials(study)
    limit = datetime.now() - timedelta(seconds=grace)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "run_dir" in t.user_attrs or t.datetime_start is None or t.datetime_start > limit:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:  # another worker finished or failed it meanwhile
            continue
        study.set_user_attr(f"lost:{t.number}", f"worker stopped before the trial began ({grace} s ago)")


def run_study(
    settings: StudySettings,
    *,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_wait: Callable[[list[int], int], None] | None = None,
) -> StudyRun:
    """Create or continue a study and run trials until it holds ``settings.n_trials`` finished ones.

    With an SQL storage, once every trial has been started, the call waits for the trials still
    RUNNING: live workers finish them, those of dead workers are failed after the heartbeat grace
    period and replaced. So re-running a command whose worker was killed completes the study.

    Args:
        settings: the study (see :class:`StudySettings`).
        callbacks: called after every trial of this process (Optuna callback signature).
        on_wait: called with the numbers of the RUNNING trials waited for and the grace period
            (seconds), whenever that set changes.

    Returns:
        The study, its directory and the number of trials this call ran.

    Raises:
        ConfigError: bad settings, a storage that cannot be opened, or a study started with
            different options.
    """
    if not isinstance(settings.n_trials, int) or settings.n_trials < 1:
        raise ConfigError(f"--trials: expected a positive integer, got {settings.n_trials!r}")
    if not settings.objectives:
        raise ConfigError("--hw: at least one hardware profile is needed")
    objectives_info = []
    for o in settings.objectives:
        profile, cm = resolve_cost_model(o.hw, o.cost)
        objectives_info.append(
            {"label": f"{profile.name}:{cm.name}", "hw": o.hw, "cost": cm.name, "unit": cm.unit, "metric": cm.metric}
        )
    labels = [o["label"] for o in objectives_info]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--hw: the same profile and cost model appears twice ({', '.join(labels)})")
    target = parse_target(settings.target) if isinstance(settings.target, str) else (settings.target, None)
    if target[0] is not None and not (math.isfinite(target[0]) and target[0] > 0):
        raise ConfigError(f"--target: expected a positive cost, got {target[0]!r}")
    if target[1] is not None and target[1] < MIN_TARGET_FRACTION:
        raise ConfigError(
            f"--target {100 * target[1]:g}%: below {MIN_TARGET_FRACTION:g} of the uniform 8-bit cost; "
            "no configuration comes near it and the budget loss would overflow"
        )
    kind = "pareto" if settings.multi_objective else "tune"
    name = settings.study_name or _default_name(kind, labels)
    if not name.strip():
        raise ConfigError("--study-name: expected a non-empty name")
    signature = _signature(settings, objectives_info, target)
    interval, grace = heartbeat_settings()
    check_inputs(settings.base, [resolve_cost_model(o.hw, o.cost)[1] for o in settings.objectives], target[0])

    out_dir = Path(settings.out) if settings.out is not None else None
    default_dir = Path("runs") / study_dir_name(name)  # a name like ../../x stays inside runs/
    if settings.storage is None:
        out_dir = out_dir or default_dir
        storage_url = f"sqlite:///{(out_dir / 'study.db').resolve()}"
    else:
        storage_url = settings.storage
    storage = open_storage(storage_url)
    directions = ["maximize", *(["minimize"] * len(labels) if settings.multi_objective else [])]
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=cast("list[Literal['minimize', 'maximize']]", directions),
        load_if_exists=True,
        sampler=make_sampler(settings.sampler, settings.base.seed),
    )
    with warnings.catch_warnings():  # set_metric_names is marked experimental in optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", *(f"cost {label}" for label in labels)][: len(directions)])
    stored = study.user_attrs.get(STUDY_ATTR)
    if stored is not None:
        _check_continuation(stored, signature, name)
        out_dir = out_dir or Path(stored.get("out") or default_dir)
    elif study.trials:
        raise ConfigError(
            f"study {name} in {mask_url(storage_url)} was not created by hwsbs; pass another --study-name"
        )
    out_dir = (out_dir or default_dir).resolve()
    if stored is None and (out_dir / "trials").is_dir() and any((out_dir / "trials").iterdir()):
        raise ConfigError(
            f"--out {out_dir}: holds the trials of another study (not in {mask_url(storage_url)}); "
            "choose another --out or pass that study's --storage"
        )
    if stored is None:
        study.set_user_attr(STUDY_ATTR, {**signature, "out": str(out_dir), "study_name": name})
    out_dir.mkdir(parents=True, exist_ok=True)

    inner = settings.inner_budget and "target_fraction" not in {p.name for p in settings.space.params}
    base = dataclasses.replace(
        settings.base,
        hw=settings.objectives[0].hw,
        cost=settings.objectives[0].cost,
        target=target[0] if inner else None,
        target_fraction=target[1] if inner else None,
    )
    if counted_trials(study) < settings.n_trials:
        base = dataclasses.replace(base, checkpoint=pretrain_once(base, out_dir))
    objective = _TrialObjective(settings, base, labels, out_dir, target)
    heartbeat = isinstance(storage, RDBStorage) and storage.heartbeat_interval is not None
    waited_for: list[int] = []
    while True:
        if heartbeat:
            _fail_lost_trials(study, grace)  # a killed worker's RUNNING trial becomes FAIL, and is replaced
        if counted_trials(study) < settings.n_trials:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=list(callbacks))
            continue
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not heartbeat or not running:  # journal storages: a dead worker's trial would be waited for forever
            break
        if running != waited_for and on_wait is not None:
            on_wait(running, grace)
        waited_for = running
        time.sleep(min(interval, 5))
    return StudyRun(study, out_dir, mask_url(storage_url), objective.started)
