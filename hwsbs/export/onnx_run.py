"""Run an exported ONNX model with ONNX Runtime: pinned threads, sequential, as a torch module."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hwsbs.errors import ConfigError

__all__ = ["require_onnxruntime", "ort_session", "OrtModule"]


def require_onnxruntime(what: str = "ONNX Runtime") -> Any:
    """The ``onnxruntime`` module, or ConfigError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(
            f"{what} needs the onnxruntime package, which is not installed: pip install -e '.[deploy]' "
            "(or pip install onnx onnxruntime)"
        ) from None
    return onnxruntime


def ort_session(model: bytes, threads: int | None = None) -> Any:
    """A CPU ``InferenceSession`` with ``threads`` intra-op threads (None: ORT's default), one
    inter-op thread and sequential execution, so timings are comparable with torch's."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unfused nodes are not the user's business
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An ONNX Runtime session called like the torch model (float32 CPU tensors in and out)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])
