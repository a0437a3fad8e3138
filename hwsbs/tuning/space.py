"""The outer search space Optuna samples: a built-in default, or a YAML file.

A space file maps :class:`~hwsbs.config.SearchConfig` field names to one of::

    lam: {low: 0.01, high: 10, log: true}      # a float range (int range for integer fields)
    group_size: {choices: [2, 4, 8]}            # a categorical choice
    bits: {choices: ["2,4,8", "1,2,4,8"]}       # bit-width sets, as strings or lists
    search_lr: 0.02                             # a fixed value (no sampling)
    weight: {low: 0.05, high: 1.0}              # pareto: each profile's log-cost weight

Fields a file does not name keep their command-line values. ``weight`` is a pseudo-parameter:
with several ``--hw`` profiles, one weight per profile is sampled from it (parameter
``weight:<profile>:<cost model>``) and the weights are normalised to sum to 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna

from hardware_profiles.yaml_io import load_yaml
from hwsbs.config import SearchConfig
from hwsbs.errors import ConfigError

__all__ = ["Param", "TuningSpace", "TUNABLE", "WEIGHT"]

#: SearchConfig fields a space may sample, with the kind of value each takes.
TUNABLE: dict[str, str] = {
    "lam": "float",
    "temperature": "float",
    "threshold_lr": "float",
    "search_lr": "float",
    "lr": "float",
    "weight_decay": "float",
    "target_fraction": "float",
    "max_prune_fraction": "float",
    "group_size": "int",
    "batch_size": "int",
    "search_epochs": "int",
    "finetune_epochs": "int",
    "pin_bits": "int",
    "prune": "bool",
    "pin_first_last": "bool",
    "bits": "bits",
}
#: The pseudo-parameter from which each profile's log-cost weight is sampled.
WEIGHT = "weight"
_SPEC_KEYS = {"type", "low", "high", "log", "step", "choices", "value"}


@dataclass(frozen=True)
class Param:
    """One sampled (or fixed) hyperparameter.

    Attributes:
        name: SearchConfig field (or ``weight``).
        kind: ``float``, ``int``, ``categorical`` or ``fixed``.
        low / high / log / step: the range of ``float`` and ``int`` parameters.
        choices: the options of a ``categorical`` parameter (bit sets as ``"2,4,8"`` strings).
        value: the value of a ``fixed`` parameter.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: optuna.Trial, name: str | None = None) -> Any:
        """Sample this parameter in ``trial`` (under ``name``, default its own name)."""
        key = name or self.name
        if self.kind == "float":
            # float and int parameters have a range (checked when the space is read)
            low, high = cast(float, self.low), cast(float, self.high)
            return trial.suggest_float(key, low, high, log=self.log, step=self.step)
        if self.kind == "int":
            low, high = cast(float, self.low), cast(float, self.high)
            return trial.suggest_int(key, int(low), int(high), log=self.log, step=int(self.step or 1))
        if self.kind == "categorical":
            return trial.suggest_categorical(key, list(self.choices))
        return self.value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (stored with the study, compared on continuation)."""
        if self.kind == "fixed":
            return {"value": self.value}
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out


def _bits_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f'{where}: expected bit widths like "2,4,8" or [2, 4, 8], got {value!r}')
    try:
        ints = [int(p) for p in parts]
        if any(isinstance(p, float) and p != int(p) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected integer bit widths, got {value!r}") from None
    return ",".join(str(b) for b in ints)


def to_config_value(name: str, value: Any) -> Any:
    """A sampled value as the SearchConfig field wants it (bit strings become tuples)."""
    if name == "bits":
        return tuple(int(b) for b in str(value).split(","))
    kind = TUNABLE.get(name, "float")
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return float(value)


def _check_value(name: str, value: Any, where: str) -> Any:
    """Coerce one concrete value for ``name`` and let SearchConfig validate it."""
    kind = TUNABLE.get(name, "float")
    if kind == "bits":
        value = _bits_text(value, where)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if name == WEIGHT:
        if value < 0:
            raise ConfigError(f"{where}: a weight must be >= 0, got {value!r}")
        return float(value)
    try:
        SearchConfig(**{name: to_config_value(name, value)})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value if kind in ("bits", "bool", "int") else float(value)


def _parse_param(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: {name}"
    kind = TUNABLE.get(name, "float")
    if not isinstance(spec, Mapping):
        return Param(name, "fixed", value=_check_value(name, spec, where))
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; use low/high[/log/step], choices or value")
    if "value" in spec:
        if len(spec) > 1:
            raise ConfigError(
                f"{where}: 'value' fixes the parameter; it cannot be combined with {sorted(set(spec) - {'value'})}"
            )
        return Param(name, "fixed", value=_check_value(name, spec["value"], where))
    if "choices" in spec:
        if set(spec) - {"choices", "type"}:
            raise ConfigError(f"{where}: 'choices' cannot be combined with low/high/log/step")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        values = tuple(_check_value(name, c, f"{where}: choice {c!r}") for c in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: duplicate choices in {choices!r}")
        return Param(name, "categorical", choices=values)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: expected low and high (a range), choices (a list) or value (fixed)")
    if kind in ("bool", "bits"):
        raise ConfigError(f"{where}: {name} cannot take a range; list its options under 'choices'")
    ptype = "int" if kind == "int" else "float"
    if spec.get("type", ptype) != ptype:
        raise ConfigError(f"{where}: {name} takes a {ptype} range, got type {spec['type']!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    low = _check_value(name, spec["low"], f"{where}: low")
    high = _check_value(name, spec["high"], f"{where}: high")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got low={low!r} high={high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
    step = spec.get("step")
    if step is not None:
        if log:
            raise ConfigError(f"{where}: step and log cannot be combined")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0:
            raise ConfigError(f"{where}: step must be a positive number, got {step!r}")
        if ptype == "int" and not isinstance(step, int):
            raise ConfigError(f"{where}: an int range needs an integer step, got {step!r}")
    return Param(name, ptype, low=low, high=high, log=log, step=step)


def _default_params() -> tuple[Param, ...]:
    return (
        Param("lam", "float", low=0.01, high=10.0, log=True),
        Param("temperature", "float", low=0.5, high=2.0, log=True),
        Param("threshold_lr", "float", low=0.01, high=0.5, log=True),
        Param("group_size", "categorical", choices=(2, 4, 8)),
        Param("bits", "categorical", choices=("2,4,8", "1,2,4,8")),
    )


@dataclass(frozen=True)
class Sample:
    """What one trial sampled: SearchConfig overrides and per-profile log-cost weights."""

    options: dict[str, Any]
    weights: list[float]


@dataclass(frozen=True)
class TuningSpace:
    """The hyperparameters a study samples (every other option comes from the command line).

    Attributes:
        params: the sampled or fixed SearchConfig fields.
        weight: the distribution of each profile's log-cost weight (several profiles only).
        source: ``default`` or the file it was read from.
    """

    params: tuple[Param, ...] = field(default_factory=_default_params)
    weight: Param = field(default_factory=lambda: Param(WEIGHT, "float", low=0.05, high=1.0))
    source: str = "default"

    @classmethod
    def default(cls) -> TuningSpace:
        """lambda (log), temperature (log), threshold_lr (log), group size, candidate bits."""
        return cls()

    @classmethod
    def from_file(cls, path: str | Path) -> TuningSpace:
        """Read and validate a space YAML file.

        Raises:
            ConfigError: naming the file, the parameter and what is wrong.
        """
        return cls.from_dict(load_yaml(path), str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>") -> TuningSpace:
        """Validate a space mapping (the parsed YAML)."""
        if not isinstance(data, Mapping) or not data:
            raise ConfigError(f"{source}: expected a mapping of parameter names to ranges, choices or values")
        params: list[Param] = []
        weight = Param(WEIGHT, "float", low=0.05, high=1.0)
        for name, spec in data.items():
            if name == WEIGHT:
                weight = _parse_param(WEIGHT, spec, source)
                continue
            if name not in TUNABLE:
                raise ConfigError(
                    f"{source}: unknown parameter {name!r}; tunable: {', '.join(sorted(TUNABLE))}, {WEIGHT}"
                )
            params.append(_parse_param(name, spec, source))
        return cls(tuple(params), weight, source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the same mapping a space file holds)."""
        out = {p.name: p.to_dict() for p in self.params}
        out[WEIGHT] = self.weight.to_dict()
        return out

    def sample(self, trial: optuna.Trial, objective_labels: Sequence[str]) -> Sample:
        """Sample every parameter; with several objectives also their normalised weights."""
        options = {p.name: to_config_value(p.name, p.suggest(trial)) for p in self.params}
        weights = [1.0]
        if len(objective_labels) > 1:
            raw = [float(self.weight.suggest(trial, f"{WEIGHT}:{label}")) for label in objective_labels]
            total = sum(raw)
            weights = [w / total for w in raw] if total > 0 else [1.0 / len(raw)] * len(raw)
        return Sample(options, weights)
