"""What a cost model sees: a layer's fixed shape and its discrete compression state.

A cost model is a black box from a layer's discrete state to a number. The search never
differentiates it analytically: it evaluates it on discrete configurations and uses gate-flip
differences (see ``hwsbs.sbs.cost_term``), so lookup tables and cycle models plug in unchanged.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from hardware_profiles.schema import FLOAT_BITS

from .errors import CostModelError

if TYPE_CHECKING:
    from hardware_profiles.schema import HardwareProfile

_P = TypeVar("_P")

#: Bits of one weight scale of grouped (weight-only) quantisation: an FP16 number.
SCALE_BITS = 16
#: Distinct (shape, state, batch) results each cost model instance memoises.
LAYER_COST_CACHE_SIZE = 1 << 16

__all__ = ["FLOAT_BITS", "SCALE_BITS", "LAYER_COST_CACHE_SIZE", "LayerShape", "LayerState", "CostModel"]


@dataclass(frozen=True)
class LayerShape:
    """The static shape of one searched operation, as traced with a sample input.

    Linear layers use ``kernel_size=(1, 1)`` and ``out_size=(positions, 1)`` where positions is
    the number of vectors the layer is applied to per sample (1 for a classifier head).

    A ``matmul`` is a product of two activations (attention's Q K^T and P V): per sample,
    ``heads`` products of an M x K operand (the "input", at ``a_bits``) and a K x N operand (the
    "second operand", at ``w_bits``), with ``in_channels=K``, ``out_channels=N`` and
    ``in_size = out_size = (M, heads)``. It stores no weights; both operands are read per sample.
    """

    name: str  # qualified module name in the model, e.g. "layer1.0.conv1"
    kind: Literal["conv", "linear", "matmul"]  # conv: Conv2d, linear: Linear, matmul: activation x activation
    in_channels: int  # unpruned input channels (features for Linear)
    out_channels: int  # unpruned output channels
    kernel_size: tuple[int, int] = (1, 1)  # (kh, kw)
    stride: tuple[int, int] = (1, 1)  # (sh, sw)
    groups: int = 1  # Conv2d groups; depthwise when groups == in_channels == out_channels
    in_size: tuple[int, int] = (1, 1)  # spatial size of the input (H, W)
    out_size: tuple[int, int] = (1, 1)  # spatial size of the output (H, W)

    @property
    def is_depthwise(self) -> bool:
        """True for a depthwise conv, whose channels are coupled one to one."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def signature(self) -> str:
        """A stable key for lookup tables: everything that decides a layer's speed but its channels' pruning."""
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ih, iw = self.in_size
        if self.kind == "linear":
            return f"linear_i{self.in_channels}_o{self.out_channels}_n{self.out_size[0]}"
        if self.kind == "matmul":
            return f"matmul_m{self.out_size[0]}_k{self.in_channels}_n{self.out_channels}_h{self.out_size[1]}"
        group_tag = "dw" if self.is_depthwise else f"g{self.groups}"
        return f"conv_k{kh}x{kw}_s{sh}x{sw}_{group_tag}_i{self.in_channels}_o{self.out_channels}_h{ih}x{iw}"

    def macs(self, kept_in: int | None = None, kept_out: int | None = None) -> int:
        """Multiply-accumulates per sample with the given kept channel counts."""
        cin = self.in_channels if kept_in is None else kept_in
        cout = self.out_channels if kept_out is None else kept_out
        oh, ow = self.out_size
        kh, kw = self.kernel_size
        if self.is_depthwise:
            return oh * ow * cout * kh * kw
        return oh * ow * cout * (cin // self.groups if self.groups > 1 else cin) * kh * kw

    def weight_count(self, kept_in: int | None = None, kept_out: int | None = None) -> int:
        """Number of stored weights (bias excluded) with the given kept channel counts (0 for a matmul)."""
        if self.kind == "matmul":
            return 0
        cin = self.in_channels if kept_in is None else kept_in
        cout = self.out_channels if kept_out is None else kept_out
        kh, kw = self.kernel_size
        if self.is_depthwise:
            return cout * kh * kw
        return cout * (cin // self.groups if self.groups > 1 else cin) * kh * kw

    def operand_count(self, kept_in: int | None = None, kept_out: int | None = None) -> int:
        """Second-operand elements read per sample at ``w_bits``: a matmul's K x N operands, else 0."""
        if self.kind != "matmul":
            return 0
        cin = self.in_channels if kept_in is None else kept_in
        cout = self.out_channels if kept_out is None else kept_out
        return cin * cout * self.out_size[1]

    def input_count(self, kept_in: int | None = None) -> int:
        """Input activations read per sample."""
        cin = self.in_channels if kept_in is None else kept_in
        return cin * self.in_size[0] * self.in_size[1]

    def output_count(self, kept_out: int | None = None) -> int:
        """Output activations written per sample."""
        cout = self.out_channels if kept_out is None else kept_out
        return cout * self.out_size[0] * self.out_size[1]


@dataclass(frozen=True)
class LayerState:
    """A layer's discrete compression state: the only thing a cost model may depend on."""

    w_bits: int  # weight bit width; FLOAT_BITS for float
    a_bits: int  # input-activation bit width; FLOAT_BITS for float
    kept_in: int  # input channels left after the producer's pruning
    kept_out: int  # output channels left after this layer's pruning
    w_group: int = 0  # weights per scale along the input dimension (0: per-channel scales, not counted)
    act_float: bool = False  # weight-only: activations stay float at a_bits (a weight-only kernel runs it)
    fp_weights: int = -1  # APB: weights kept in full precision, the rest binary (-1: not an APB layer)
    # Channel-wise weight bits: ((w_bits, kept output channels at it), ...) ascending in bits, the
    # counts summing to kept_out, w_bits then the widest. () = every channel at w_bits. A model
    # that ignores it prices the layer at its widest group, which is what one-precision kernels run.
    w_bits_groups: tuple[tuple[int, int], ...] = ()

    def bit_splits(self, shape: LayerShape) -> tuple[LayerState, ...]:
        """The layer as one sub-layer per weight width, each with its own output channels (a
        depthwise layer's channels are its inputs too); ``(self,)`` when every channel shares one."""
        if not self.w_bits_groups:
            return (self,)
        return tuple(
            replace(self, w_bits=b, kept_out=n, kept_in=n if shape.is_depthwise else self.kept_in, w_bits_groups=())
            for b, n in self.w_bits_groups
        )

    @property
    def widest(self) -> LayerState:
        """The layer run at its widest group's weight width (one precision for every channel)."""
        return replace(self, w_bits_groups=()) if self.w_bits_groups else self

    def scale_count(self, shape: LayerShape) -> int:
        """Weight scales stored with grouped weights: one per output channel and input group."""
        if self.w_group <= 0 or shape.kind == "matmul":
            return 0
        per_row = shape.weight_count(self.kept_in, self.kept_out) // max(self.kept_out, 1)
        return self.kept_out * -(-per_row // self.w_group)


class CostModel(ABC):
    """Maps a layer's shape and discrete state to a cost in a declared unit.

    Subclasses set ``name``, ``metric`` and ``unit``, and declare with ``monotone`` whether the
    cost never decreases when bits or kept channels grow (checked by ``hwsbs.testing``).
    """

    name: ClassVar[str] = ""  # registry name, e.g. "bops"
    metric: ClassVar[str] = ""  # what is measured: "bops", "latency", "energy", "size"
    unit: ClassVar[str] = ""  # unit of the returned numbers, e.g. "BOPs", "s", "J", "bit"
    monotone: ClassVar[bool] = True  # cost is non-decreasing in w_bits, a_bits, kept_in, kept_out

    def __init__(self, profile: HardwareProfile | None = None) -> None:
        self.profile = profile

    @abstractmethod
    def layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        """Cost of running ``shape`` in ``state`` on a batch of ``batch`` samples."""

    def cached_layer_cost(self, shape: LayerShape, state: LayerState, batch: int = 1) -> float:
        """:meth:`layer_cost`, memoised per instance on (shape, state, batch).

        The search evaluates the same few states of every layer many times per step; shapes and
        states are frozen dataclasses, so they key an LRU cache directly. Results must therefore
        depend only on the arguments and on the (immutable) profile.
        """
        cache: Callable[..., float] | None = self.__dict__.get("_layer_cost_cache")
        if cache is None:  # created lazily: subclasses need not call super().__init__()
            cache = functools.lru_cache(maxsize=LAYER_COST_CACHE_SIZE)(self.layer_cost)
            self.__dict__["_layer_cost_cache"] = cache
        return cache(shape, state, batch)

    def model_cost(self, shapes: list[LayerShape], states: list[LayerState], batch: int = 1) -> float:
        """Cost of a whole model: the sum of its layers' costs (override for cross-layer effects)."""
        return float(sum(self.cached_layer_cost(s, st, batch) for s, st in zip(shapes, states, strict=True)))

    def require_profile(self) -> HardwareProfile:
        """The profile this model was built with.

        Raises:
            CostModelError: built without one (device-specific models need ``--hw``).
        """
        if self.profile is None:
            raise CostModelError(f"cost model {self.name!r} needs a hardware profile (--hw NAME or FILE)")
        return self.profile

    def profile_params(self, params_cls: type[_P]) -> _P:
        """This model's parameters: the profile's ``cost_model`` block when it names this model,
        else ``params_cls()`` defaults (the model was chosen with ``--cost`` over another default)."""
        block: Any = getattr(self.profile, "cost_model", None)
        if block is not None and getattr(block, "name", None) == self.name and isinstance(block, params_cls):
            return block
        return params_cls()

    def describe(self) -> str:
        """One line for tables and logs."""
        hw = f" on {self.profile.name}" if self.profile is not None else ""
        return f"{self.name} ({self.metric}, {self.unit}){hw}"
