"""Where an export starts: a model spec, a configuration and fine-tuned weights (or a run directory)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardware_profiles.checked_io import read_checked_json
from hwsbs.apb.format import is_apb_layer, restore_apb_layers
from hwsbs.checkpoint import load_model_state
from hwsbs.defaults import API_MODEL_PREFIX
from hwsbs.errors import CheckpointError, ConfigError
from hwsbs.models import build_model, list_models
from hwsbs.sbs.config_io import CompressionConfig, load_config
from hwsbs.sbs.convert import convert_model
from hwsbs.sbs.derive import apply_config

__all__ = [
    "ModelSpec",
    "default_spec",
    "spec_from_config",
    "compressed_model",
    "load_run",
    "read_run_options",
    "run_model_name",
]


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and the input geometry it is built for."""

    name: str  # built-in name or package.module:factory
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)

    def build(self) -> nn.Module:
        """The untrained full-precision model."""
        return build_model(self.name, self.num_classes, self.in_channels, self.image_size)

    def example(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """A random input batch (normal, like normalised images)."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.in_channels, *self.image_size, generator=gen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(str(data["name"]), int(data["num_classes"]), int(data["in_channels"]), tuple(data["image_size"]))

    def describe(self) -> str:
        h, w = self.image_size
        return f"{self.name} ({self.in_channels}x{h}x{w}, {self.num_classes} classes)"


def default_spec(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> ModelSpec:
    """A built-in model with its builder's default geometry, overridden where given.

    ``small_cnn``: 1x8x8, 10 classes (digits); ``resnet20``: 3x32x32, 10 classes (CIFAR);
    ``mobilenetv2``/``resnet18``/``resnet50``: 3x224x224, 1000 classes (ImageNet).
    """
    from hwsbs.models.registry import _MODELS

    defaults: dict[str, Any] = {"num_classes": 10, "in_channels": 3, "image_size": (32, 32)}
    builder = _MODELS.get(name)
    if builder is not None:
        for key, param in inspect.signature(builder).parameters.items():
            if key in defaults and param.default is not inspect.Parameter.empty:
                defaults[key] = param.default
    size = image_size if image_size is not None else defaults["image_size"]
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ModelSpec(
        name,
        int(num_classes if num_classes is not None else defaults["num_classes"]),
        int(in_channels if in_channels is not None else defaults["in_channels"]),
        hw,
    )


def spec_from_config(
    name: str,
    config: CompressionConfig,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> ModelSpec:
    """The spec a configuration was found for: input geometry from its first layer, classes from
    its last (true for classifiers whose first layer reads the image); arguments override."""
    if not config.layers:
        raise ConfigError("the configuration has no layers")
    first, last = config.layers[0].shape, config.layers[-1].shape
    size = image_size if image_size is not None else first.in_size
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ModelSpec(
        name,
        int(num_classes if num_classes is not None else last.out_channels),
        int(in_channels if in_channels is not None else first.in_channels),
        hw,
    )


def compressed_model(
    spec: ModelSpec,
    config: CompressionConfig,
    state: dict[str, torch.Tensor] | None = None,
    source: str = "config.yaml",
) -> nn.Module:
    """The fixed, pruned SBS model ``config`` describes, with ``state`` (fine-tuned weights) loaded;
    APB layers are made APB again from the state, and their masks must match the configuration.

    Without ``state`` the weights are the untrained ones, calibrated on a random batch (enough
    for latency measurements).

    Raises:
        ModelError: the configuration does not fit the model.
        CheckpointError: ``state`` does not fit the configured model.
    """
    space = convert_model(spec.build(), spec.example(), config.bits, group_size=config.group_size, prune=True)
    model = apply_config(space, config, source)
    if state is not None:
        restore_apb_layers(model, state)  # APB layers: their alpha, delta and frozen mask are in the state
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise CheckpointError(
                f"checkpoint does not match {spec.name} configured by {source}: {detail[:240]}"
            ) from None
        for d in config.layers:
            mod: Any = model.get_submodule(d.shape.name)
            if d.fp_weights >= 0 and (
                not is_apb_layer(mod) or not bool(mod.apb_frozen) or int((~mod.apb_mask).sum()) != d.fp_weights
            ):
                raise CheckpointError(
                    f"checkpoint: APB layer {d.shape.name} keeps other full-precision weights than {source}"
                )
    return model.eval()


def read_run_options(run_dir: str | Path | None) -> dict[str, Any]:
    """A run directory's ``options.json`` ({} when there is none); it is data, never code.

    Raises:
        ConfigError: an options file that is not a regular file, not JSON, or not a JSON object.
    """
    if run_dir is None or not os.path.lexists(Path(run_dir) / "options.json"):
        return {}
    path = Path(run_dir) / "options.json"
    options = read_checked_json(path)
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: expected a JSON object (the run's options), got {type(options).__name__}")
    return options


def run_model_name(run_dir: str | Path, options: dict[str, Any]) -> str | None:
    """The model a run directory's options name, if it is a built-in one (None: it names none).

    A ``module:factory`` imports and runs code, so it must come from the caller (``--model``,
    ``load_run(model=...)``): a run directory, possibly someone else's, cannot choose it.

    Raises:
        ConfigError: a model that is not a string, code to import, or unknown.
    """
    if "model" not in options:
        return None
    name, where = options["model"], Path(run_dir) / "options.json"
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: model: expected a model name, got {name!r}")
    if name in list_models():
        return name
    if name.startswith(API_MODEL_PREFIX):
        raise ConfigError(
            f"{where}: the run was started from the Python API with a {name.removeprefix(API_MODEL_PREFIX)} object, "
            "which a run directory cannot rebuild; pass --model NAME or module:factory (or give "
            "hwsbs.search(..., factory=...))"
        )
    if ":" in name:
        raise ConfigError(
            f"{where}: model {name!r} is code to import, which a run directory cannot choose; "
            f"if you trust it, pass --model {name} yourself"
        )
    raise ConfigError(f"{where}: model: unknown model {name!r}; known: {', '.join(list_models())} (or pass --model)")


def load_run(
    run_dir: str | Path | None = None,
    *,
    config_path: str | Path | None = None,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> tuple[ModelSpec, nn.Module, CompressionConfig]:
    """The spec, the fine-tuned compressed model and its configuration from a run directory (or
    from explicit files; explicit arguments override what the run directory says).

    ``model`` defaults to the run's model, which must be a built-in one: a ``module:factory``
    in ``options.json`` is refused unless passed here explicitly.

    Raises:
        ConfigError: neither a run directory nor config + checkpoint + model are given, or the
            run's options are unreadable or name code to import.
        CheckpointError: the checkpoint is unreadable, from an unfinished run, or not finite.
    """
    rd = Path(run_dir) if run_dir is not None else None
    if rd is not None and not rd.is_dir():
        raise ConfigError(f"--run {rd}: not a directory")
    cfg_path = Path(config_path) if config_path else (rd / "config.yaml" if rd else None)
    ckpt_path = Path(checkpoint) if checkpoint else (rd / "checkpoint.pt" if rd else None)
    name = model
    if name is None and rd is not None:
        name = run_model_name(rd, read_run_options(rd))
    if cfg_path is None or ckpt_path is None or name is None:
        raise ConfigError("give --run RUN_DIR, or --config FILE --checkpoint FILE --model NAME")
    config = load_config(cfg_path)
    spec = spec_from_config(name, config, num_classes, in_channels, image_size)
    state = load_model_state(ckpt_path)
    return spec, compressed_model(spec, config, state, str(cfg_path)), config
