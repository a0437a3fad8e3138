"""``--compile``: ``torch.compile`` over the quantiser kernels, with a fallback to eager (issue 16).

Only the fused quantiser's two tensor functions (:mod:`hwsbs.quant.kernels`) are compiled, not
the model: graph breaks stay local, and the convolutions keep their eager (oneDNN / cuDNN)
kernels. Inductor emits C++ on CPU and Triton on GPU and fuses each function into a few loops.
Compiled values may differ from eager in the last bits (reductions are reordered), so compiling
is an option, off by default. When no compiler works (no C++ compiler, no Triton, an unsupported
platform) the first failure is caught, one warning line is printed, and the run continues eager.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["compile_quantizers", "compiling", "kernel", "kernels_compiled"]

_STATE: dict[str, Any] = {"enabled": False, "failed": False, "compiled": {}}


def _warn(exc: BaseException) -> None:
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    print(f"hwsbs search: warning: --compile: torch.compile failed ({detail}); continuing eager", file=sys.stderr)


def _fallback(name: str, eager: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, which on its first failure switches every kernel back to eager (one warning)."""

    def call(*args: Any) -> Any:
        if _STATE["failed"]:
            return eager(*args)
        try:
            return fn(*args)
        except Exception as exc:  # a missing compiler shows up here, on the first call
            _STATE["failed"] = True
            _STATE["compiled"].clear()
            _warn(exc)
            return eager(*args)

    call.__name__ = f"compiled_{name}"
    return call


def _raise_recompile_limit(limit: int = 64) -> None:
    """One compiled kernel serves every quantiser (weights and activations of every shape, signed
    or not, masked or not): allow more specialisations than dynamo's default of 8 before it gives up."""
    config = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):  # the name changed between torch versions
        if hasattr(config, key):
            setattr(config, key, max(int(getattr(config, key)), limit))
            return


def kernel(name: str, eager: Callable[..., Any]) -> Callable[..., Any]:
    """The function to run for kernel ``name``: compiled while :func:`compile_quantizers` is on."""
    if not _STATE["enabled"] or _STATE["failed"]:
        return eager
    fn = _STATE["compiled"].get(name)
    if fn is None:
        try:
            _raise_recompile_limit()
            # Static shapes: a dynamic-shape kernel ran 4x slower on CPU; a model has few shapes.
            fn = _fallback(name, eager, torch.compile(eager, dynamic=False))
        except Exception as exc:  # torch.compile itself unavailable (e.g. an unsupported Python)
            _STATE["failed"] = True
            _warn(exc)
            return eager
        _STATE["compiled"][name] = fn
    return fn


def compile_quantizers(enabled: bool, notice: bool = True) -> bool:
    """Switch compiled quantiser kernels on or off for every SBS layer; returns the previous setting.

    Args:
        enabled: compile (True) or run eager (False).
        notice: print the one-line notice when switching on.
    """
    old = bool(_STATE["enabled"])
    if old == bool(enabled):  # called again (the CLI and the pipeline): keep the compiled kernels
        return old
    _STATE["enabled"] = bool(enabled)
    _STATE["failed"] = False
    _STATE["compiled"] = {}
    if enabled and notice:
        print(
            "hwsbs search: --compile: compiling the quantiser kernels with torch.compile "
            "(the first steps are slower; falls back to eager if no compiler works)",
            file=sys.stderr,
        )
    return old


def compiling() -> bool:
    """True while compiled kernels are on and have not failed."""
    return bool(_STATE["enabled"]) and not _STATE["failed"]


@contextmanager
def kernels_compiled(enabled: bool) -> Iterator[None]:
    """Compile (or not) inside the block only, keeping compiled kernels (benchmarks alternate)."""
    old = _STATE["enabled"]
    _STATE["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _STATE["enabled"] = old
