"""The defaults every part of hwsbs shares, written once.

Search options, the conversion of a model, configuration files, lookup-table builders and the
conformance checks all default to these, so a search space described in one place means the
same thing in every other.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_GROUP_SIZE",
    "DEFAULT_MAX_PRUNE_FRACTION",
    "DEFAULT_PIN_BITS",
    "FINETUNE_LR_FACTOR",
    "API_MODEL_PREFIX",
    "API_DATA",
]

#: Candidate bit widths, for weights and activations alike (each must double the previous).
DEFAULT_BITS: tuple[int, ...] = (2, 4, 8)
#: Output channels per pruning gate (the paper's 4 on CIFAR; 8 for MobileNetV2, 16 for ResNet-18).
DEFAULT_GROUP_SIZE = 4
#: At most this share of a prunable layer's channel groups can be pruned.
DEFAULT_MAX_PRUNE_FRACTION = 0.5
#: Bits of the pinned first and last layers (the paper's convention).
DEFAULT_PIN_BITS = 8
#: Fine-tuning starts from trained weights: its learning rate is this share of training's.
FINETUNE_LR_FACTOR = 0.2

#: How a run started from the Python API with a model object records its model (``options.json``).
API_MODEL_PREFIX = "python-api:"
#: And its data, which lives in the caller's process only.
API_DATA = "python-api"
