"""Deployable export: a found configuration on real integer kernels, pruned channels removed.

``export_model`` turns a fixed SBS model into an :class:`ExportedModel` (int8 kernels for layers
of <= 8 bits the device executes exactly, float32 for the rest); ``ExportedModel.save`` and
``load_exported`` store it as tensors plus plain metadata (``torch.load(weights_only=True)``);
APB layers run on the bitwise kernels (:mod:`hwsbs.export.apb`);
``export_onnx`` writes the same layers as an ONNX QDQ model for ONNX Runtime (docs/deploy.md).
"""

from __future__ import annotations

from .apb import APBKernelLayer
from .encoding import int16_pair_safe, weight_codes
from .kernels import BACKENDS, onednn_available, onednn_saturates, resolve_backend
from .layers import ExportedLayer, LayerRecord
from .model import EXPORT_FORMAT, ExportedModel, export_model, load_exported, plan_path
from .onnx_export import OnnxExport, export_onnx
from .source import ModelSpec, compressed_model, default_spec, load_run, spec_from_config

__all__ = [
    "APBKernelLayer",
    "BACKENDS",
    "EXPORT_FORMAT",
    "ExportedLayer",
    "ExportedModel",
    "LayerRecord",
    "ModelSpec",
    "OnnxExport",
    "compressed_model",
    "default_spec",
    "export_model",
    "export_onnx",
    "int16_pair_safe",
    "load_exported",
    "load_run",
    "onednn_available",
    "onednn_saturates",
    "plan_path",
    "resolve_backend",
    "spec_from_config",
    "weight_codes",
]
