"""The found configuration (``config.yaml``): per-layer bits and pruning, with each layer's shape.

Shapes travel with the decisions so that ``hwsbs cost`` can cost a configuration on any profile
without the model, and so a config can be checked against a model before fine-tuning it.

:func:`load_config` validates a file completely before anything uses it: field types (integers
are integers, not ``"3"`` or ``true``), ranges (bits 1..32, channel counts, sizes, strides,
``group_size`` and ``batch`` 1..2**24), candidate ``bits`` that double (2, 4, 8), unknown or
missing fields, layer names that are empty or repeated, pruned channel indices outside the layer
or repeated, kept channel counts that contradict the shape, and groups that do not divide the
channels. Every problem is a :class:`ConfigError` naming the file, the layer and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, Strict, ValidationError

from cost_models.base import FLOAT_BITS, CostModel, LayerShape, LayerState
from hardware_profiles.yaml_io import dump_yaml, load_yaml
from hwsbs.defaults import DEFAULT_BITS, DEFAULT_GROUP_SIZE
from hwsbs.errors import ConfigError

from .channel_config import CHANNEL_FORMAT, bit_histogram, check_group_bits, collapse_group_bits
from .config_errors import format_error

__all__ = ["CONFIG_FORMAT", "LayerDecision", "CompressionConfig", "save_config", "load_config", "uniform_decision"]

CONFIG_FORMAT = "hwsbs-config/1"
#: Largest channel count, spatial size, kernel, stride, group size or batch a config may hold (2**24).
MAX_COUNT = 1 << 24
#: Widest candidate bit width a search uses (``hwsbs search --bits``).
MAX_SEARCH_BITS = 16


@dataclass
class LayerDecision:
    """What the search decided for one layer."""

    shape: LayerShape  # the layer's unpruned shape
    w_bits: int  # weight bits (FLOAT_BITS = float)
    a_bits: int  # input-activation bits (FLOAT_BITS = float)
    pruned_channels: list[int] = field(default_factory=list)  # output channel indices removed
    kept_in: int | None = None  # input channels left by the producer's pruning (None = all)
    w_group: int = 0  # weights per FP16 scale along the input dimension (0: per-channel scales)
    act_float: bool = False  # weight-only: activations (a matmul's operands: both) stay float at a_bits
    fp_weights: int = -1  # APB (w_bits 1): weights kept in full precision, the rest binary (-1: not APB)
    # Channel-wise bits (--granularity channel): one weight width per group of bit_group_size
    # output channels; () = the whole layer at w_bits (then the widest group's width).
    group_w_bits: tuple[int, ...] = ()
    bit_group_size: int = 0  # output channels per entry of group_w_bits (the config's group_size)

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
            w_group=self.w_group,
            act_float=self.act_float,
            fp_weights=self.fp_weights,
            w_bits_groups=bit_histogram(
                self.group_w_bits, self.bit_group_size, self.shape.out_channels, self.pruned_channels
            ),
        )

    def summary(self) -> dict[str, Any]:
        """The fields config.yaml and result.json both start a layer's entry with: name, bits, channels."""
        return {
            "name": self.shape.name,
            "w_bits": list(self.group_w_bits) if self.group_w_bits else self.w_bits,  # a list: per group
            "a_bits": self.a_bits,
            "out_channels": self.shape.out_channels,
            "kept_out_channels": self.kept_out,
            "kept_in_channels": self.state.kept_in,
        }


@dataclass
class CompressionConfig:
    """A whole model's decisions, in layer order."""

    layers: list[LayerDecision]  # one per quantised Conv2d/Linear, in module order
    model: str = ""  # model name or module:factory it was found for (informational)
    dataset: str = ""  # dataset it was found on (informational)
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))  # candidate bit widths searched
    group_size: int = DEFAULT_GROUP_SIZE  # channels per pruning group
    batch: int = 1  # batch size the costs are reported for

    def by_name(self) -> dict[str, LayerDecision]:
        return {d.shape.name: d for d in self.layers}

    def cost(self, cost_model: CostModel) -> float:
        """Total cost of this configuration."""
        return cost_model.model_cost([d.shape for d in self.layers], [d.state for d in self.layers], self.batch)

    def layer_costs(self, cost_model: CostModel) -> list[float]:
        return [cost_model.layer_cost(d.shape, d.state, self.batch) for d in self.layers]

    def uniform(self, bits: int) -> CompressionConfig:
        """The same model at ``bits`` everywhere, unpruned (full precision with FLOAT_BITS).

        For weight-only layers "``bits`` everywhere" means the weights: their activations (both
        operands of an attention product) stay at their float width, and weights keep their groups.
        """
        layers = [uniform_decision(d, bits) for d in self.layers]
        return CompressionConfig(
            layers=layers,
            model=self.model,
            dataset=self.dataset,
            bits=list(self.bits),
            group_size=self.group_size,
            batch=self.batch,
        )

    def full_precision(self) -> CompressionConfig:
        return self.uniform(FLOAT_BITS)


def uniform_decision(d: LayerDecision, bits: int) -> LayerDecision:
    """``d``'s layer at ``bits``, unpruned: float (no groups) at FLOAT_BITS; a weight-only layer keeps
    its float activations (an attention product both operands); weights keep their groups."""
    if bits >= FLOAT_BITS:
        return LayerDecision(d.shape, bits, bits)
    if not d.act_float:
        return LayerDecision(d.shape, bits, bits, w_group=d.w_group)
    if d.shape.kind == "matmul":
        return LayerDecision(d.shape, d.w_bits, d.a_bits, act_float=True)
    return LayerDecision(d.shape, bits, d.a_bits, w_group=d.w_group, act_float=True)


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
    data: dict[str, Any] = {
        "format": CHANNEL_FORMAT if any(d.group_w_bits for d in config.layers) else CONFIG_FORMAT,
        "model": config.model,
        "dataset": config.dataset,
        "bits": list(config.bits),
        "group_size": config.group_size,
        "batch": config.batch,
        "layers": [
            {
                **d.summary(),
                "pruned_channels": list(d.pruned_channels),
                **({"weight_group": d.w_group} if d.w_group else {}),
                **({"act_float": True} if d.act_float else {}),
                **({"fp_weights": d.fp_weights} if d.fp_weights >= 0 else {}),
                "shape": _shape_to_dict(d.shape),
            }
            for d in config.layers
        ],
    }
    dump_yaml(data, path)


def _in_range(lo: int, hi: int) -> Callable[[int], int]:
    """A validator accepting ``lo..hi`` (its message is what users read: ``expected 1..32, got 64``)."""

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"expected {lo}..{hi}, got {value}")
        return value

    return check


_Bits = Annotated[int, Strict(), AfterValidator(_in_range(1, FLOAT_BITS))]


def _w_bits(value: Any) -> int | list[int]:
    """A layer's ``w_bits``: an integer 1..32, or a non-empty list of them (one per channel group)."""
    listed = isinstance(value, list)
    for i, v in enumerate(value if listed and value else [value]):
        at = f"[{i}]: " if listed else ""
        if isinstance(v, bool) or not isinstance(v, int):
            shown = f", got {v!r}" if isinstance(v, str | float | type(None)) and len(repr(v)) <= 40 else ""
            raise ValueError(f"{at}expected an integer (or a list of them, one per channel group){shown}")
        if not 1 <= v <= FLOAT_BITS:
            raise ValueError(f"{at}expected 1..{FLOAT_BITS}, got {v}")
    return value


_WBits = Annotated[int | list[int], PlainValidator(_w_bits)]
_Count = Annotated[int, Strict(), AfterValidator(_in_range(1, MAX_COUNT))]
_Index = Annotated[int, Strict(), AfterValidator(_in_range(0, MAX_COUNT - 1))]
_Pair = tuple[_Count, _Count]
_Name = Annotated[str, Strict(), Field(min_length=1)]


class _Strict(BaseModel):
    """Base of the file models: unknown keys are errors, floats must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _ShapeFile(_Strict):
    """A layer's ``shape:`` block (a :class:`LayerShape`)."""

    kind: Literal["conv", "linear", "matmul"]
    in_channels: _Count
    out_channels: _Count
    kernel_size: _Pair
    stride: _Pair
    groups: _Count
    in_size: _Pair
    out_size: _Pair


class _LayerFile(_Strict):
    """One entry of ``layers:`` (a :class:`LayerDecision`)."""

    name: _Name
    shape: _ShapeFile  # before the bits: a layer without its shape is reported as such
    w_bits: _WBits  # a list: one width per output-channel group (hwsbs-config/2)
    a_bits: _Bits
    out_channels: _Count | None = None
    kept_out_channels: _Count | None = None
    kept_in_channels: _Count | None = None
    pruned_channels: list[_Index] | None = None
    weight_group: _Count | None = None
    act_float: Annotated[bool, Strict()] = False
    fp_weights: Annotated[int, Strict(), AfterValidator(_in_range(0, 1 << 62))] | None = None


class _ConfigFile(_Strict):
    """The whole file (a :class:`CompressionConfig`)."""

    format: Literal["hwsbs-config/1", "hwsbs-config/2"]
    model: Annotated[str, Strict()] | None = ""
    dataset: Annotated[str, Strict()] | None = ""
    bits: list[Annotated[int, Strict(), AfterValidator(_in_range(1, MAX_SEARCH_BITS))]] = Field(
        default_factory=lambda: list(DEFAULT_BITS), min_length=1
    )
    group_size: _Count = 4
    batch: _Count = 1
    layers: list[_LayerFile] = Field(min_length=1)


def _check_bits(src: str, bits: list[int]) -> None:
    for lo, hi in zip(bits, bits[1:]):
        if hi != 2 * lo:
            raise ConfigError(f"{src}: bits: each bit width must double the previous one, got {bits}")


def _check_shape(where: str, shape: _ShapeFile) -> None:
    """Groups that fit the channels (a linear layer has one)."""
    if shape.kind != "conv" and shape.groups != 1:
        raise ConfigError(f"{where}.shape.groups: expected 1 for a {shape.kind} layer, got {shape.groups}")
    for key in ("in_channels", "out_channels"):
        if getattr(shape, key) % shape.groups:
            raise ConfigError(f"{where}.shape.groups: {shape.groups} does not divide {key} ({getattr(shape, key)})")


def _check_layer(where: str, layer: _LayerFile) -> list[int]:
    """Cross-field checks of one layer; returns its sorted pruned channels."""
    shape = layer.shape
    _check_shape(where, shape)
    if layer.out_channels is not None and layer.out_channels != shape.out_channels:
        raise ConfigError(
            f"{where}.out_channels: {layer.out_channels} differs from shape.out_channels ({shape.out_channels})"
        )
    pruned = list(layer.pruned_channels or [])
    bad = next((c for c in pruned if c >= shape.out_channels), None)
    if bad is not None:
        raise ConfigError(
            f"{where}.pruned_channels: expected channel indices in 0..{shape.out_channels - 1}, got {bad}"
        )
    if len(set(pruned)) != len(pruned):
        raise ConfigError(
            f"{where}.pruned_channels: channel {next(c for c in pruned if pruned.count(c) > 1)} is listed twice"
        )
    if len(pruned) == shape.out_channels:
        raise ConfigError(f"{where}.pruned_channels: every output channel is pruned")
    kept_out = shape.out_channels - len(pruned)
    if layer.kept_out_channels is not None and layer.kept_out_channels != kept_out:
        raise ConfigError(
            f"{where}.kept_out_channels: expected {kept_out} (out_channels {shape.out_channels} minus "
            f"{len(pruned)} pruned), got {layer.kept_out_channels}"
        )
    if layer.kept_in_channels is not None and layer.kept_in_channels > shape.in_channels:
        raise ConfigError(f"{where}.kept_in_channels: expected 1..{shape.in_channels}, got {layer.kept_in_channels}")
    if layer.fp_weights is not None:  # an APB layer: binary weights plus fp_weights kept in full precision
        kept_in = shape.in_channels if layer.kept_in_channels is None else layer.kept_in_channels
        total = LayerShape(name=layer.name, **shape.model_dump()).weight_count(kept_in, kept_out)
        if layer.w_bits != 1 or layer.fp_weights > total:
            raise ConfigError(
                f"{where}.fp_weights: expected an APB layer (w_bits 1) with at most {total} weights, "
                f"got w_bits {layer.w_bits} and {layer.fp_weights}"
            )
    return sorted(pruned)


def _decision(where: str, layer: _LayerFile, group_size: int, version: str) -> LayerDecision:
    pruned = _check_layer(where, layer)
    s = layer.shape
    w_bits, group_bits = (layer.w_bits, ()) if isinstance(layer.w_bits, int) else (0, tuple(layer.w_bits))
    if group_bits:
        if version != CHANNEL_FORMAT:
            raise ConfigError(f"{where}.w_bits: a list of widths needs format {CHANNEL_FORMAT!r}, got {version!r}")
        check_group_bits(where, group_bits, group_size, s.out_channels)
        w_bits, group_bits = collapse_group_bits(group_bits, group_size, s.out_channels, pruned)
    shape = LayerShape(name=layer.name, **s.model_dump())  # the shape block holds LayerShape's other fields
    kept_in = s.in_channels if layer.kept_in_channels is None else layer.kept_in_channels
    fp = -1 if layer.fp_weights is None else layer.fp_weights
    return LayerDecision(
        shape,
        w_bits,
        layer.a_bits,
        pruned,
        kept_in,
        layer.weight_group or 0,
        layer.act_float,
        fp,
        group_bits,
        group_size,
    )


def _validate(src: str, data: Any) -> _ConfigFile:
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: expected a mapping with 'format' and 'layers'")
    found = data.get("format")
    if found not in (CONFIG_FORMAT, CHANNEL_FORMAT):  # first, so another file type is named as such
        newer = " (written by a newer hwsbs: upgrade to read it)" if str(found).startswith("hwsbs-config/") else ""
        raise ConfigError(f"{src}: format: expected {CONFIG_FORMAT!r} or {CHANNEL_FORMAT!r}, got {found!r}{newer}")
    try:
        return _ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_error(src, data, exc)) from None


def load_config(path: str | Path) -> CompressionConfig:
    """Read a ``config.yaml`` written by :func:`save_config`.

    Raises:
        ConfigError: naming the file, the layer, the field and the problem.
    """
    src = str(path)
    parsed = _validate(src, load_yaml(path))
    _check_bits(src, parsed.bits)
    layers: list[LayerDecision] = []
    seen: dict[str, int] = {}
    for i, layer in enumerate(parsed.layers):
        where = f"{src}: layers[{i}] ({layer.name})"
        if layer.name in seen:
            raise ConfigError(f"{where}.name: {layer.name!r} is also the name of layers[{seen[layer.name]}]")
        seen[layer.name] = i
        layers.append(_decision(where, layer, parsed.group_size, parsed.format))
    return CompressionConfig(
        layers=layers,
        model=parsed.model or "",
        dataset=parsed.dataset or "",
        bits=list(parsed.bits),
        group_size=parsed.group_size,
        batch=parsed.batch,
    )
