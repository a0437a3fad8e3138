"""Does the export compute what the fake-quantised model computes?

Integer accumulation is exact and each layer's input levels are computed with the fake
quantiser's own operations, so a single exported layer reproduces its SBS layer to float32
rounding (about 1e-6 relative). Across a whole network a rounding difference occasionally moves
one activation across a quantisation step boundary (the reference itself accumulates in float
and is the inexact side); such a flip changes that sample's logits by up to a few percent at 2-4
bits. The tolerance is therefore stated per sample: identical argmax on >= 99 % of samples and
a median per-sample relative logit difference below 1e-3 (max |delta logit| / max |logit|).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "REL_TOL",
    "ONNX_REL_TOL",
    "INTEGER_EDGES_REL_TOL",
    "MIN_ARGMAX_AGREEMENT",
    "compare_logits",
    "verify_export",
    "verify_onnx",
]

#: Per-sample relative logit difference counted as "equal to float rounding".
REL_TOL = 1e-3
#: Share of samples whose predicted class must be identical.
MIN_ARGMAX_AGREEMENT = 0.99
#: Median per-sample relative logit difference allowed for an ONNX export (docs/deploy.md): its
#: layers that feed an integer kernel round their bias onto int32 (as QLinearConv takes it), and
#: ONNX Runtime's float order differs, so more activations flip a step than in the torch export;
#: measured medians are ~1e-7 (small_cnn) to ~3e-3 (resnet20 with 2-bit layers).
ONNX_REL_TOL = 1e-2
#: The same for ``--integer-edges`` exports: residual adds and pooling run on 8-bit grids set by
#: calibration, so values round once more per block; measured medians 7e-3..1.1e-2 on uniform
#: 8-bit resnet20 (docs/deploy.md). Low-bit mixed configurations exceed it and fail, as they should.
INTEGER_EDGES_REL_TOL = 2e-2


def compare_logits(ref: Tensor, out: Tensor) -> dict[str, float]:
    """Per-sample relative max-abs difference statistics and argmax agreement."""
    ref2, out2 = ref.detach().float().flatten(1), out.detach().float().flatten(1)
    rel = (out2 - ref2).abs().amax(1) / ref2.abs().amax(1).clamp_min(1e-12)
    return {
        "samples": float(ref2.shape[0]),
        "max_rel": float(rel.max()),
        "median_rel": float(rel.median()),
        "within_tol": float((rel <= REL_TOL).float().mean()),
        "argmax_agreement": float((out2.argmax(1) == ref2.argmax(1)).float().mean()),
    }


@torch.inference_mode()
def verify_export(
    reference: nn.Module,
    exported: nn.Module,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    limit: int | None = None,
) -> dict[str, Any]:
    """Run both models on ``batches`` (tensors or (input, label) pairs) and compare.

    Returns:
        :func:`compare_logits` over all samples, plus both accuracies when labels are given and
        ``passed`` (argmax agreement >= 99 % and median relative difference <= 1e-3).
    """
    was_training = reference.training
    reference.eval()
    refs, outs, labels = [], [], []
    seen = 0
    try:
        for batch in batches:
            x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            x = x.to(device)
            refs.append(reference(x).cpu())
            outs.append(exported(x).cpu())
            if y is not None:
                labels.append(y.cpu())
            seen += x.shape[0]
            if limit is not None and seen >= limit:
                break
    finally:
        reference.train(was_training)
    ref, out = torch.cat(refs), torch.cat(outs)
    stats: dict[str, Any] = compare_logits(ref, out)
    if labels:
        y = torch.cat(labels)
        stats["accuracy_fake_quant"] = float((ref.argmax(1) == y).float().mean())
        stats["accuracy_export"] = float((out.argmax(1) == y).float().mean())
    stats["passed"] = stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT and stats["median_rel"] <= REL_TOL
    return stats


def verify_onnx(
    reference: nn.Module,
    session: Any,
    batches: Iterable[Any],
    device: torch.device | str = "cpu",
    limit: int | None = None,
    tolerance: float = ONNX_REL_TOL,
) -> dict[str, Any]:
    """:func:`verify_export` of an ONNX Runtime ``session`` against ``reference``, judged with
    argmax agreement >= 99 % and a median relative difference <= ``tolerance``
    (:data:`ONNX_REL_TOL`; :data:`INTEGER_EDGES_REL_TOL` for integer-edge exports)."""
    from .onnx_run import OrtModule

    stats = verify_export(reference, OrtModule(session), batches, device, limit)
    stats["passed"] = stats["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT and stats["median_rel"] <= tolerance
    return stats
