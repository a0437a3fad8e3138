"""Run configuration: every option of a search, with why it exists (nanoGPT style)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE, DEFAULT_MAX_PRUNE_FRACTION, DEFAULT_PIN_BITS
from hwsbs.errors import ConfigError
from hwsbs.quant.channel_bits import GRANULARITIES
from hwsbs.quant.quantizer import validate_bit_candidates

__all__ = ["SearchConfig", "parse_target", "check_device", "check_seed", "MAX_SEED", "MIN_TARGET_FRACTION"]

#: Seeds must fit every generator they feed (numpy and Optuna's samplers take 0..2**32-1).
MAX_SEED = 2**32 - 1
#: A budget below this share of the uniform 8-bit cost is refused: no configuration comes within
#: orders of magnitude of it, and log(cost / target) overflows float32 in the budget loss (which
#: would surface as a "diverged" loss blamed on the learning rate).
MIN_TARGET_FRACTION = 1e-30


def check_seed(seed: Any, flag: str = "--seed") -> int:
    """``seed`` as an integer 0..MAX_SEED.

    Raises:
        ConfigError: ``--seed: expected an integer 0..4294967295, got -1``.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{flag}: expected an integer 0..{MAX_SEED}, got {seed!r}")
    return seed


def _parse_device(device: Any, flag: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{flag} {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "meta":
        raise ConfigError(f"{flag} {device!r}: the meta device holds no data; use cpu or cuda")
    return dev


def check_device(device: Any, flag: str = "--device") -> torch.device:
    """``device`` as a torch device that exists on this machine.

    Raises:
        ConfigError: not a device name, CUDA (or MPS) unavailable, or a CUDA index past the last
            device: ``--device cuda: no CUDA device is available (this torch is built without CUDA)``.
    """
    dev = _parse_device(device, flag)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible to it"
            raise ConfigError(f"{flag} {device}: no CUDA device is available ({why})")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{flag} {device}: there is no CUDA device {dev.index} (this machine has {count})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag} {device}: no MPS device is available")
    elif dev.type != "cpu":
        try:
            torch.zeros(1, device=dev)
        except Exception as exc:  # an unavailable back-end raises RuntimeError, AssertionError, ...
            detail = " ".join(str(exc).split())[:160]
            raise ConfigError(f"{flag} {device}: not usable on this machine ({detail})") from None
    return dev


SBS_INITS = ("8bit", "ilp")  # --init choices
SBS_COMPLETIONS = ("ilp", "ilp-widths", "greedy")  # --completion choices


def check_granularity(cfg: SearchConfig) -> None:
    """``--granularity``: a known value, and ``channel`` only where it is implemented (one line otherwise).

    Raises:
        ConfigError: an unknown value, or ``channel`` with a method other than sbs, random or
            optuna, or with ``--curvature``, ``--flip-probe`` or ``--weight-group``.
    """
    if cfg.granularity not in GRANULARITIES:
        raise ConfigError(f"--granularity: expected one of {', '.join(GRANULARITIES)}, got {cfg.granularity!r}")
    if cfg.granularity == "layer":
        return
    methods = ("sbs", "random", "optuna")  # those that search channel-wise weight bits
    clash = next((f for f, on in (("--curvature", cfg.curvature), ("--flip-probe", cfg.flip_probe > 0)) if on), None)
    other = cfg.method not in methods
    if other or clash or cfg.weight_group:
        what = f"--method {cfg.method}" if other else clash or f"--weight-group {cfg.weight_group}"
        raise ConfigError(
            f"--granularity channel: not implemented with {what} (methods {', '.join(methods)} only, "
            "without --curvature, --flip-probe, --weight-group)"
        )


@dataclass
class SearchConfig:
    """Options of one search run (CLI flags map 1:1 onto these fields)."""

    # --- what to compress and where
    hw: str = "a100"  # hardware profile: built-in name or YAML path
    cost: str | None = None  # cost model override; None = the profile's default
    model: str = "small_cnn"  # built-in model name or package.module:factory
    data: str = "digits"  # dataset name; digits needs no files
    data_dir: str | None = None  # where file-based datasets live
    subset: int | None = None  # cap on training samples, for quick runs
    workers: int = 0  # DataLoader worker processes
    checkpoint: str | None = None  # trained full-precision state_dict: skips pretraining
    method: str = "sbs"  # search method: sbs (baselines register other names)
    # --- the search space
    bits: tuple[int, ...] = DEFAULT_BITS  # candidate bit widths; each must double the previous
    uniform_bits: int | None = None  # for the uniform baseline: every searchable layer at this width
    init: str = "8bit"  # where SBS's gates start: 8bit (the paper: all open) or ilp (the integer program's choice)
    pin_first_last: bool = True  # first and last layers stay at pin_bits (paper convention)
    pin_bits: int = DEFAULT_PIN_BITS  # bits of the pinned layers
    prune: bool = True  # search 0-bit channel groups on prunable pairs
    curvature: bool = False  # SBS gates also see each flip's Fisher curvature (second-order loss change)
    flip_probe: int = 0  # SBS bit gates learn from flip differences measured every N steps (0: the paper's)
    # how SBS lowers a steady state that ends over --target: "ilp" (least-sensitive assignment at
    # or below it, on the searched weights), "ilp-widths" (the same with only the widths as
    # ceilings, pruning the program's) or "greedy" (largest cost saving first, loss-blind)
    completion: str = "ilp"
    weight_only: bool = False  # LLM practice: search weight bits only, activations stay float
    act_float_bits: int = 16  # weight-only: the float width activations run and are priced at (16 or 32)
    weight_group: int = 0  # weights per FP16 scale along the input dim (0: one learned clip); e.g. 128
    group_size: int = DEFAULT_GROUP_SIZE  # output channels per pruning gate (paper: 4 on CIFAR)
    # "layer": one weight width per layer (the paper); "channel": one per output-channel group of
    # group_size (AJPQ-style), activations still per layer. Why: bit-serial arrays pay per channel.
    granularity: str = "layer"
    max_prune_fraction: float = DEFAULT_MAX_PRUNE_FRACTION  # at most this share of a layer's groups can be pruned
    # --- the objective
    lam: float = 0.3  # lambda: weight of the log-cost; also how fast cost-driven gates move
    target: float | None = None  # absolute cost budget (budget form of the loss) in the model's unit
    target_fraction: float | None = None  # budget as a fraction of the uniform 8-bit cost
    temperature: float = 1.0  # gate surrogate temperature tau (paper: 1)
    cost_batch: int = 1  # batch size the cost model prices (deployment batch)
    # --- schedule
    pretrain_epochs: int = 15  # full-precision training when no checkpoint is given
    search_epochs: int = 10  # joint weight + gate search
    finetune_epochs: int = 6  # training of the derived fixed configuration
    batch_size: int = 64  # training batch size
    lr: float = 0.05  # SGD learning rate for full-precision training and fine-tuning
    search_lr: float = 0.01  # SGD learning rate for weights during the search
    threshold_lr: float = 0.05  # SGD lr for gate thresholds, in units of the cost gradient's RMS
    weight_decay: float = 5e-4  # on weights only; never on thresholds or clipping values
    # --- run control
    seed: int = 0  # seeds every random source (torch, python, data order, Optuna)
    device: str = "cpu"  # torch device
    out: str | None = None  # run directory; None = runs/<timestamp>
    resume: bool = False  # continue from the run directory's last checkpoint
    progress: bool = True  # rich progress bars
    compile: bool = False  # torch.compile the quantiser kernels (hwsbs.quant.compiled); off: little gain on CPU
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific options (baselines)

    def __post_init__(self) -> None:
        if self.init not in SBS_INITS:
            raise ConfigError(f"--init: expected one of {', '.join(SBS_INITS)}, got {self.init!r}")
        if self.completion not in SBS_COMPLETIONS:
            raise ConfigError(f"--completion: expected one of {', '.join(SBS_COMPLETIONS)}, got {self.completion!r}")
        self.bits = validate_bit_candidates(self.bits)
        check_granularity(self)
        check_seed(self.seed)
        _parse_device(self.device, "--device")  # availability: check_device, when the run starts
        positive_ints = ("group_size", "batch_size", "cost_batch")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
        for name in ("pretrain_epochs", "search_epochs", "finetune_epochs", "workers", "flip_probe"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 0, got {value!r}")
        for name in ("lr", "search_lr", "threshold_lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')}: expected a positive number, got {value!r}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError(f"--lambda: expected a number >= 0, got {self.lam!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay: expected a number >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.max_prune_fraction < 1.0:
            raise ConfigError(f"--max-prune-fraction: expected 0 <= f < 1, got {self.max_prune_fraction!r}")
        if self.target is not None and not (math.isfinite(self.target) and self.target > 0):
            raise ConfigError(f"--target: expected a positive cost, got {self.target!r}")
        if self.target_fraction is not None and not (math.isfinite(self.target_fraction) and 0 < self.target_fraction):
            raise ConfigError(f"--target: expected a positive percentage, got {self.target_fraction!r}")
        if self.target_fraction is not None and self.target_fraction < MIN_TARGET_FRACTION:
            raise ConfigError(
                f"--target {100 * self.target_fraction:g}%: below {MIN_TARGET_FRACTION:g} of the uniform "
                "8-bit cost; no configuration comes near it and the budget loss would overflow"
            )
        if not isinstance(self.compile, bool):
            raise ConfigError(f"--compile: expected true or false, got {self.compile!r}")
        if self.act_float_bits not in (16, 32):
            raise ConfigError(f"--act-float-bits: expected 16 or 32, got {self.act_float_bits!r}")
        if isinstance(self.weight_group, bool) or not isinstance(self.weight_group, int) or self.weight_group < 0:
            raise ConfigError(
                f"--weight-group: expected 0 (one clip per layer) or a positive size, got {self.weight_group!r}"
            )
        if self.pin_bits not in (*self.bits, 32) and self.pin_bits not in range(1, 33):
            raise ConfigError(f"--pin-bits: expected 1..32, got {self.pin_bits!r}")
        if self.uniform_bits is not None and not 1 <= self.uniform_bits <= 32:
            raise ConfigError(f"--bits: uniform width must be 1..32, got {self.uniform_bits!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bits"] = list(self.bits)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown search option(s): {', '.join(unknown)}")
        return cls(**data)


def parse_target(text: str) -> tuple[float | None, float | None]:
    """``--target``: an absolute cost (``1.5e6``) or a share of the uniform 8-bit cost (``30%``).

    Returns:
        ``(absolute, fraction)`` with exactly one of them set.
    """
    raw = text.strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100.0
            if not (math.isfinite(value) and value > 0):
                raise ValueError
            return None, value
        value = float(raw)
        if not (math.isfinite(value) and value > 0):
            raise ValueError
        return value, None
    except ValueError:
        raise ConfigError(
            f"--target: expected a positive cost like 2.5e9 or a percentage like 30%, got {text!r}"
        ) from None
