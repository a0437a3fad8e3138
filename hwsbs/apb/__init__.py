"""APB (Automatic Prune Binarization, arXiv 2306.08960): binary weights plus sparse full-precision outliers.

:mod:`.format` holds the weight rule and the layer state, :mod:`.decision` what result.json
reports of the full-precision counts (``LayerDecision.fp_weights``), :mod:`.kernels` the
bit-packed CPU kernels.
"""

from __future__ import annotations

from .decision import apb_summary, binary_fraction, is_apb_decision
from .format import APB_TAU, apb_weight, fp_count, is_apb_layer, make_apb_layer

__all__ = [
    "APB_TAU",
    "apb_summary",
    "apb_weight",
    "binary_fraction",
    "fp_count",
    "is_apb_decision",
    "is_apb_layer",
    "make_apb_layer",
]
