"""The found configuration (``config.yaml``): per-layer bits and pruning, with each layer's shape.

Shapes travel with the decisions so that ``hwsbs cost`` can cost a configuration on any profile
without the model, and so a config can be checked against a model before fine-tuning it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cost_models.base import FULL_PRECISION_BITS, CostModel, LayerShape, LayerState
from hwsbs.errors import ConfigError
from hwsbs.profiles.yaml_io import dump_yaml, load_yaml

__all__ = ["CONFIG_FORMAT", "LayerDecision", "CompressionConfig", "save_config", "load_config"]

CONFIG_FORMAT = "hwsbs-config/1"


@dataclass
class LayerDecision:
    """What the search decided for one layer."""

    shape: LayerShape  # the layer's unpruned shape
    w_bits: int  # weight bits (FULL_PRECISION_BITS = float)
    a_bits: int  # input-activation bits (FULL_PRECISION_BITS = float)
    pruned_channels: list[int] = field(default_factory=list)  # output channel indices removed
    kept_in: int | None = None  # input channels left by the producer's pruning (None = all)

    @property
    def kept_out(self) -> int:
        return self.shape.out_channels - len(self.pruned_channels)

    @property
    def state(self) -> LayerState:
        return LayerState(
            w_bits=self.w_bits,
            a_bits=self.a_bits,
            kept_in=self.shape.in_channels if self.kept_in is None else self.kept_in,
            kept_out=self.kept_out,
        )


@dataclass
class CompressionConfig:
    """A whole model's decisions, in layer order."""

    layers: list[LayerDecision]  # one per quantised Conv2d/Linear, in module order
    model: str = ""  # model name or module:factory it was found for (informational)
    dataset: str = ""  # dataset it was found on (informational)
    bits: list[int] = field(default_factory=lambda: [2, 4, 8])  # candidate bit widths searched
    group_size: int = 4  # channels per pruning group
    batch: int = 1  # batch size the costs are reported for

    def by_name(self) -> dict[str, LayerDecision]:
        return {d.shape.name: d for d in self.layers}

    def cost(self, cost_model: CostModel) -> float:
        """Total cost of this configuration."""
        return cost_model.model_cost([d.shape for d in self.layers], [d.state for d in self.layers], self.batch)

    def layer_costs(self, cost_model: CostModel) -> list[float]:
        return [cost_model.layer_cost(d.shape, d.state, self.batch) for d in self.layers]

    def uniform(self, bits: int) -> CompressionConfig:
        """The same model at ``bits`` everywhere, unpruned (full precision with FULL_PRECISION_BITS)."""
        return CompressionConfig(
            layers=[LayerDecision(d.shape, bits, bits) for d in self.layers],
            model=self.model,
            dataset=self.dataset,
            bits=list(self.bits),
            group_size=self.group_size,
            batch=self.batch,
        )

    def full_precision(self) -> CompressionConfig:
        return self.uniform(FULL_PRECISION_BITS)


def _shape_to_dict(shape: LayerShape) -> dict[str, Any]:
    return {
        "kind": shape.kind,
        "in_channels": shape.in_channels,
        "out_channels": shape.out_channels,
        "kernel_size": list(shape.kernel_size),
        "stride": list(shape.stride),
        "groups": shape.groups,
        "in_size": list(shape.in_size),
        "out_size": list(shape.out_size),
    }


def save_config(config: CompressionConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (atomically)."""
    data = {
        "format": CONFIG_FORMAT,
        "model": config.model,
        "dataset": config.dataset,
        "bits": list(config.bits),
        "group_size": config.group_size,
        "batch": config.batch,
        "layers": [
            {
                "name": d.shape.name,
                "w_bits": d.w_bits,
                "a_bits": d.a_bits,
                "out_channels": d.shape.out_channels,
                "kept_out_channels": d.kept_out,
                "kept_in_channels": d.state.kept_in,
                "pruned_channels": list(d.pruned_channels),
                "shape": _shape_to_dict(d.shape),
            }
            for d in config.layers
        ],
    }
    dump_yaml(data, path)


def _require(mapping: dict, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in mapping:
        raise ConfigError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, typ) or isinstance(value, bool):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise ConfigError(f"{where}.{key}: expected {names}, got {value!r}")
    return value


def _pair(mapping: dict, key: str, where: str) -> tuple[int, int]:
    value = _require(mapping, key, list, where)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{where}.{key}: expected two positive integers, got {value!r}")
    return (value[0], value[1])


def load_config(path: str | Path) -> CompressionConfig:
    """Read a ``config.yaml`` written by :func:`save_config`.

    Raises:
        ConfigError: naming the file, the field and the problem.
    """
    src = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: expected a mapping with 'format' and 'layers'")
    fmt = data.get("format")
    if fmt != CONFIG_FORMAT:
        raise ConfigError(f"{src}: format: expected {CONFIG_FORMAT!r}, got {fmt!r}")
    raw_layers = _require(data, "layers", list, src)
    layers: list[LayerDecision] = []
    for i, raw in enumerate(raw_layers):
        where = f"{src}: layers[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping")
        name = _require(raw, "name", str, where)
        where = f"{src}: layers[{i}] ({name})"
        shp = _require(raw, "shape", dict, where)
        kind = _require(shp, "kind", str, where + ".shape")
        if kind not in ("conv", "linear"):
            raise ConfigError(f"{where}.shape.kind: expected 'conv' or 'linear', got {kind!r}")
        shape = LayerShape(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            in_channels=_require(shp, "in_channels", int, where + ".shape"),
            out_channels=_require(shp, "out_channels", int, where + ".shape"),
            kernel_size=_pair(shp, "kernel_size", where + ".shape"),
            stride=_pair(shp, "stride", where + ".shape"),
            groups=_require(shp, "groups", int, where + ".shape"),
            in_size=_pair(shp, "in_size", where + ".shape"),
            out_size=_pair(shp, "out_size", where + ".shape"),
        )
        w_bits = _require(raw, "w_bits", int, where)
        a_bits = _require(raw, "a_bits", int, where)
        for key, val in (("w_bits", w_bits), ("a_bits", a_bits)):
            if not 1 <= val <= FULL_PRECISION_BITS:
                raise ConfigError(f"{where}.{key}: expected 1..{FULL_PRECISION_BITS}, got {val}")
        pruned = raw.get("pruned_channels", []) or []
        if not isinstance(pruned, list) or not all(
            isinstance(c, int) and 0 <= c < shape.out_channels for c in pruned
        ):
            raise ConfigError(f"{where}.pruned_channels: expected channel indices in 0..{shape.out_channels - 1}")
        if len(set(pruned)) == shape.out_channels:
            raise ConfigError(f"{where}.pruned_channels: every output channel is pruned")
        kept_in = raw.get("kept_in_channels", shape.in_channels)
        if not isinstance(kept_in, int) or not 1 <= kept_in <= shape.in_channels:
            raise ConfigError(f"{where}.kept_in_channels: expected 1..{shape.in_channels}, got {kept_in!r}")
        layers.append(LayerDecision(shape, w_bits, a_bits, sorted(set(pruned)), kept_in))
    bits = data.get("bits", [2, 4, 8])
    return CompressionConfig(
        layers=layers,
        model=str(data.get("model", "")),
        dataset=str(data.get("dataset", "")),
        bits=list(bits),
        group_size=int(data.get("group_size", 4)),
        batch=int(data.get("batch", 1)),
    )
