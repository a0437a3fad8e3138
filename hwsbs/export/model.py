"""Export a fixed, pruned SBS model to integer kernels; save it as tensors + plain metadata.

The saved file (``torch.save`` of a dict, readable with ``torch.load(weights_only=True)``) holds
per layer a :class:`~hwsbs.export.layers.LayerRecord` (int8 weight codes, scales, clip values,
folded batch-norm), the state of every other module (batch-norms that could not be folded, ...)
and the :class:`~hwsbs.export.source.ModelSpec` to rebuild the module tree: loading builds the
full-precision model by name, swaps in the exported layers, resizes the pruned batch-norms and
loads the rest. Prepacked kernel weights are rebuilt on load (they are opaque oneDNN tensors).
"""

from __future__ import annotations

import copy
import errno
import sys
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from hardware_profiles import FLOAT_BITS
from hardware_profiles.checked_io import write_atomic
from hwsbs.checkpoint import check_state_dict, load_torch_file
from hwsbs.errors import CheckpointError, ConfigError, ModelError
from hwsbs.models import list_models
from hwsbs.quant.layers import SBSLayerMixin, sbs_layers
from hwsbs.sbs.convert import set_submodule

from .apb import APB_PATH, apb_record
from .encoding import MAX_INT_BITS, int16_pair_safe, weight_codes
from .fuse import fuse_activations
from .kernels import onednn_saturates, resolve_backend
from .layers import ExportedLayer, LayerRecord, check_exportable
from .mixed import layer_module as _module
from .mixed import mixed_record
from .norms import _norm_affine, foldable_norms
from .source import ModelSpec

__all__ = ["EXPORT_FORMAT", "ExportedModel", "export_model", "load_exported", "plan_path", "foldable_norms"]

EXPORT_FORMAT = "hwsbs-export/1"


def plan_path(w_bits: int, a_bits: int, groups: int, padding: Any, padding_mode: str, backend: str) -> tuple[str, str]:
    """``("int8" | "float", reason)``: where a layer runs with ``backend``."""
    if backend == "float":
        return "float", "float export"
    if w_bits > MAX_INT_BITS or a_bits > MAX_INT_BITS:
        return "float", f"wider than {MAX_INT_BITS} bits"
    if isinstance(padding, str) or padding_mode != "zeros":
        return "float", f"padding {padding if isinstance(padding, str) else padding_mode}"
    if backend == "intmm" and groups != 1:
        return "float", "no grouped _int_mm kernel"
    if backend == "onednn" and onednn_saturates() and not int16_pair_safe(w_bits, a_bits):
        return "float", "int16 saturation without VNNI"
    return "int8", ""


def _capture_clips(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    """Each quantised layer's input clip exactly as its forward computes it (it is grad-scaled by
    the per-sample input size, so it is read from a real forward pass)."""
    clips: dict[str, Tensor] = {}
    hooks = []
    for name, layer in sbs_layers(model):

        def pre(mod: nn.Module, inputs: tuple[Tensor, ...], name: str = name) -> None:
            sbs = cast(SBSLayerMixin, mod)  # the hook is registered on SBS layers only
            clips.setdefault(name, sbs._act_clip(inputs[0]).detach().clone().reshape(()).float())

        module = cast(nn.Module, layer)  # every SBS layer is an nn.Module
        hooks.append(module.register_forward_pre_hook(pre))
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return clips


def _record(
    name: str, layer: SBSLayerMixin, clip: Tensor | None, norm: tuple[str, nn.BatchNorm2d] | None, backend: str
) -> LayerRecord:
    conv = isinstance(layer, nn.Conv2d)
    w_bits, a_bits = int(layer.fixed_w_bits), int(layer.fixed_a_bits)
    out_ch = int(layer.weight.shape[0])
    geom: dict[str, Any]
    if conv:
        c = cast(nn.Conv2d, layer)  # narrowed by the isinstance above
        geom = dict(
            kernel_size=tuple(c.kernel_size),
            stride=tuple(c.stride),
            dilation=tuple(c.dilation),
            groups=int(c.groups),
            padding_mode=str(c.padding_mode),
            in_channels=int(c.in_channels),
        )
        # a Conv2d's padding is a mode string or a pair (typed tuple[int, ...])
        padding = c.padding if isinstance(c.padding, str) else cast("tuple[int, int]", tuple(c.padding))
    else:
        geom = dict(
            kernel_size=(1, 1),
            stride=(1, 1),
            dilation=(1, 1),
            groups=1,
            padding_mode="zeros",
            in_channels=int(layer.weight.shape[1]),
        )
        padding = (0, 0)
    path, reason = plan_path(w_bits, a_bits, geom["groups"], padding, geom["padding_mode"], backend)
    if w_bits <= MAX_INT_BITS:
        codes = weight_codes(layer, w_bits)
        weight, w_scale, doubled = codes.codes, codes.scale, codes.doubled
    else:
        weight = (layer.quantized_weight() if w_bits < FLOAT_BITS else layer.weight).detach().float().clone()
        w_scale, doubled = torch.ones(()), False
    bias = layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(out_ch)
    scale = torch.ones(out_ch)
    if norm is not None:
        scale, shift = _norm_affine(norm[1])
        bias = bias * scale + shift
    return LayerRecord(
        name=name,
        kind="conv" if conv else "linear",
        out_channels=out_ch,
        padding=padding,
        w_bits=w_bits,
        a_bits=a_bits,
        act_signed=bool(layer.act_signed),
        path=path,
        reason=reason,
        weight=weight,
        weight_scale=w_scale.float().reshape(()),
        doubled=doubled,
        act_clip=clip if clip is not None else torch.ones(()),
        out_scale=scale.contiguous(),
        out_bias=bias.contiguous(),
        folded_norm=norm[0] if norm is not None else None,
        **geom,
    )


class ExportedModel(nn.Module):
    """A model whose Conv2d/Linear layers run on integer kernels (or float where they cannot)."""

    def __init__(
        self,
        net: nn.Module,
        records: list[LayerRecord],
        backend: str,
        device: torch.device | str,
        spec: ModelSpec | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.records = records
        self.backend = backend
        self.device = torch.device(device)
        self.spec = spec
        self.info = dict(info or {})

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.device.type == "cpu":  # the oneDNN kernels read and write NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def layers(self) -> dict[str, ExportedLayer]:
        """The exported layers by qualified name."""
        return {n: m for n, m in self.net.named_modules() if isinstance(m, ExportedLayer)}

    def layer_table(self) -> list[dict[str, Any]]:
        """One row per exported layer: bits, kept channels, where it runs and why."""
        mods = self.layers()
        return [
            {
                "name": r.name,
                "kind": r.kind,
                "w_bits": r.w_bits,
                "a_bits": r.a_bits,
                "in": r.in_channels,
                "out": r.out_channels,
                "path": r.path,
                "kernel": self.backend if r.path == "int8" else mods[r.name].backend if r.path == APB_PATH else "float",
                "reason": r.reason,
                "weight_dtype": str(r.weight.dtype).replace("torch.", ""),
                "folded_norm": r.folded_norm,
                "fused": mods[r.name].activation if r.name in mods else None,
            }
            for r in self.records
        ]

    def save(self, path: str | Path) -> Path:
        """Write the export (tensors + plain metadata) to ``path``."""
        if self.spec is None:
            raise ModelError("this export has no model spec (name and input geometry): it cannot be rebuilt on load")
        norms = {
            n: _norm_meta(m) for n, m in self.net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        }
        payload = {
            "format": EXPORT_FORMAT,
            "spec": self.spec.to_dict(),
            "backend": self.backend,
            "layers": [r.to_dict() for r in self.records],
            "folded_norms": [r.folded_norm for r in self.records if r.folded_norm],
            "norms": norms,
            "state": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "info": {**self.info, "torch": str(torch.__version__)},
        }
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{p}: cannot write the export ({exc.strerror or exc})") from None

        def write(fh: Any) -> None:
            try:
                torch.save(payload, fh)
            except RuntimeError as exc:  # torch's stream writer reports a failed write(2) as RuntimeError
                raise OSError(errno.EIO, f"torch.save: {str(exc).strip().splitlines()[0][:200]}") from None

        return write_atomic(p, write, "the export", ConfigError)


def _norm_meta(m: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    return {
        "type": type(m).__name__,
        "num_features": int(m.num_features),
        "eps": float(m.eps),
        "affine": bool(m.affine),
        "track_running_stats": bool(m.track_running_stats),
    }


@torch.no_grad()
def export_model(
    model: nn.Module,
    example: Tensor,
    *,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    spec: ModelSpec | None = None,
    fold_norms: bool = True,
) -> ExportedModel:
    """Export a model whose SBS layers are in fixed mode (``apply_config``) to integer kernels.

    Args:
        model: the fixed, physically pruned SBS model (not modified).
        example: an input batch; one eval forward reads each layer's input clip.
        backend: ``auto``, ``onednn``, ``intmm`` or ``float`` (every layer in float32).
        device: where the exported model runs.
        spec: how to rebuild the module tree on load (needed by :meth:`ExportedModel.save`).
        fold_norms: fold batch-norms that directly follow a convolution.

    Raises:
        ModelError: a layer is still in search mode, or the model has no SBS layer.
    """
    layers = sbs_layers(model)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no SBS layer: export needs a converted, configured model")
    searching = [n for n, m in layers if m.mode != "fixed"]
    if searching:
        raise ModelError(f"layer {searching[0]} is in search mode: apply a configuration (apply_config) before export")
    check_exportable(layers)
    chosen = resolve_backend(backend, device)
    was_training = model.training
    model.eval()
    try:
        clips = _capture_clips(model, example)
        pairs = foldable_norms(model) if fold_norms else {}
        net = copy.deepcopy(model).cpu()
    finally:
        model.train(was_training)
    records = []
    for name, layer in sbs_layers(net):
        norm_name = pairs.get(name)
        # foldable_norms pairs layers with BatchNorm2d modules only
        norm = (norm_name, cast(nn.BatchNorm2d, net.get_submodule(norm_name))) if norm_name else None
        if getattr(layer, "apb_frozen", None) is not None:  # an APB layer: the bitwise kernels
            affine = (norm[0], *_norm_affine(norm[1])) if norm is not None else None
            records.append(apb_record(name, layer, clips.get(name), affine))
        elif layer.fixed_row_bits:  # channel-wise bits: one sub-layer per width
            records.append(mixed_record(name, layer, _record, clips.get(name), norm, chosen))
        else:
            records.append(_record(name, layer, clips.get(name), norm, chosen))
    return _assemble(net, records, chosen, device, spec, {"from": "sbs model"})


def _assemble(
    net: nn.Module,
    records: list[LayerRecord],
    backend: str,
    device: torch.device | str,
    spec: ModelSpec | None,
    info: dict[str, Any],
) -> ExportedModel:
    for r in records:
        set_submodule(net, r.name, _module(r, backend, device))
        if r.folded_norm:
            set_submodule(net, r.folded_norm, nn.Identity())
    return ExportedModel(fuse_activations(net).to(device), records, backend, device, spec, info)


def load_exported(
    path: str | Path, device: torch.device | str = "cpu", backend: str | None = None, model: str | None = None
) -> ExportedModel:
    """Rebuild an exported model saved by :meth:`ExportedModel.save`.

    Args:
        path: the ``.pt`` file.
        device: where to run it.
        backend: override the saved integer back-end (e.g. ``intmm`` to run an export on CUDA).
        model: the ``package.module:factory`` the export was made from, when it is not a built-in
            model and its module is not imported yet: the file names it, but a file cannot make
            hwsbs import code.

    Raises:
        CheckpointError: not an export file (read with ``weights_only=True``), non-finite
            weights, or its state does not fit the rebuilt model.
        ModelError: the export names a model that is not built in, not ``model`` and whose module
            is not imported.
    """
    p = Path(path)
    data = load_torch_file(p, problem="cannot read export")
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{p}: not an hwsbs export (format {EXPORT_FORMAT!r} expected)")
    missing = [k for k in ("spec", "backend", "layers", "norms", "state") if k not in data]
    if missing:
        raise CheckpointError(f"{p}: not a complete hwsbs export: missing {', '.join(missing)}")
    try:
        spec = ModelSpec.from_dict(data["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: spec: expected name, num_classes, in_channels and image_size ({exc!r})") from None
    module = spec.name.partition(":")[0]
    if spec.name not in list_models() and spec.name != model and module not in sys.modules:
        raise ModelError(
            f"{p}: model {spec.name!r} is code to import, which an export file cannot choose; "
            f"if you trust it, pass model={spec.name!r} (or import {module} first)"
        )
    check_state_dict(data["state"], f"{p}: state")
    chosen = resolve_backend(backend or data["backend"], device)
    net = spec.build()
    for name, meta in data["norms"].items():
        cls = getattr(nn, meta["type"])
        set_submodule(
            net,
            name,
            cls(
                meta["num_features"],
                eps=meta["eps"],
                affine=meta["affine"],
                track_running_stats=meta["track_running_stats"],
            ),
        )
    records = [LayerRecord.from_dict(d) for d in data["layers"]]
    if chosen != data["backend"]:  # a different kernel may execute other bit pairs exactly
        for r in (part for rec in records for part in (rec, *rec.parts) if part.path != APB_PATH):
            r.path, r.reason = plan_path(r.w_bits, r.a_bits, r.groups, r.padding, r.padding_mode, chosen)
    for r in records:
        set_submodule(net, r.name, _module(r, chosen, device))
        if r.folded_norm:
            set_submodule(net, r.folded_norm, nn.Identity())
    net = fuse_activations(net)  # the same rewrite as at export, so the state keys match
    try:
        net.load_state_dict(data["state"], strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{p}: saved state does not fit the rebuilt {spec.name}: {lines[-1][:200]}") from None
    return ExportedModel(net.to(device), records, chosen, device, spec, data.get("info"))
