"""Name -> model builder registry, plus ``package.module:factory`` for a user's own models.

``module:factory`` runs code, so it is taken only from the command line (never from a run
directory, see ``hwsbs export``) and only for an ``nn.Module`` subclass or a Python function
outside the standard library: ``builtins:exit``, ``os:fork`` or ``shutil:rmtree`` are refused
before anything is called.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from collections.abc import Callable

from torch import nn

from hwsbs.errors import HwsbsError, ModelError

__all__ = ["ModelBuilder", "register_model", "list_models", "build_model"]

#: A builder gets the dataset's geometry and returns an untrained model.
ModelBuilder = Callable[..., nn.Module]

_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``fn(num_classes, in_channels, image_size) -> nn.Module`` as ``name``.

    A builder that also names ``sequence_length`` (or takes ``**kwargs``) receives it from a
    sequence dataset (``text``); ``num_classes`` is then the vocabulary size.
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS and _MODELS[name] is not fn:
            warnings.warn(f"model {name!r} is registered again; the new builder replaces the old", stacklevel=2)
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Sorted names of the built-in models."""
    return sorted(_MODELS)


#: Top-level packages whose functions are never models: hwsbs's own (use the built-in names).
_NOT_FACTORIES = frozenset({"hwsbs", "cost_models", "hardware_profiles", "__main__"})


def _refused_module(module_name: str) -> bool:
    """The standard library (``os``, ``subprocess``, ``builtins``, ...) and hwsbs itself hold no models."""
    top = module_name.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in _NOT_FACTORIES


def _check_factory(spec: str, attr: str, factory: object) -> ModelBuilder:
    """``factory`` if it is an nn.Module subclass or a Python function outside the standard library."""
    if inspect.isclass(factory):
        if issubclass(factory, nn.Module):
            return factory
        raise ModelError(f"--model {spec!r}: {attr!r} is the class {factory.__name__}, not an nn.Module subclass")
    if not inspect.isfunction(factory):
        kind = "a built-in function" if inspect.isbuiltin(factory) else f"an object of type {type(factory).__name__}"
        raise ModelError(
            f"--model {spec!r}: {attr!r} is {kind}; a factory must be an nn.Module subclass "
            "or a function defined in Python"
        )
    origin = getattr(factory, "__module__", None) or ""
    if _refused_module(origin):
        raise ModelError(f"--model {spec!r}: {attr!r} is a function of {origin!r}, not a model factory")
    return factory


def _import_factory(spec: str) -> ModelBuilder:
    """Import ``package.module:factory`` and check that it may be called as a model builder."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ModelError(f"--model {spec!r}: expected a built-in name or 'package.module:factory'")
    if _refused_module(module_name):
        raise ModelError(f"--model {spec!r}: {module_name!r} is part of Python or hwsbs, not a module of models")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model {spec!r}: cannot import module {module_name!r}: {exc}") from None
    except (Exception, SystemExit) as exc:  # the module's own code failed while importing
        raise ModelError(f"--model {spec!r}: importing {module_name!r} failed: {_describe(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--model {spec!r}: module {module_name!r} has no callable {attr!r}")
    return _check_factory(spec, attr, factory)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _factory_kwargs(spec: str, factory: ModelBuilder, geometry: dict[str, object]) -> dict[str, object]:
    """Those of the ``geometry`` entries that ``factory`` names as parameters.

    Raises:
        ModelError: the factory has a required parameter hwsbs cannot give.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        raise ModelError(f"--model {spec!r}: cannot read the factory's parameters") from None
    kwargs: dict[str, object] = {}
    for name, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in geometry and param.kind is not param.POSITIONAL_ONLY:
            kwargs[name] = geometry[name]
        elif param.default is param.empty:
            when = " (sequence_length comes with sequence datasets such as text)" if name == "sequence_length" else ""
            raise ModelError(
                f"--model {spec!r}: the factory needs a parameter {name!r}; hwsbs passes only {', '.join(geometry)}"
                + when
            )
    return kwargs


def _call_factory(spec: str, factory: ModelBuilder, geometry: dict[str, object]) -> object:
    """Call a user factory with the geometry it names; whatever it raises becomes a ModelError.

    Only Ctrl-C (KeyboardInterrupt) passes through; ``sys.exit`` inside the factory does not end hwsbs.
    """
    kwargs = _factory_kwargs(spec, factory, geometry)
    try:
        return factory(**kwargs)
    except HwsbsError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a factory must not end the command silently
        raise ModelError(f"--model {spec!r}: the factory raised {_describe(exc)}") from None


def _takes(fn: ModelBuilder, param: str) -> bool:
    """Whether a built-in builder names ``param`` or takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    return any(p.name == param or p.kind is p.VAR_KEYWORD for p in params)


def build_model(
    name: str, num_classes: int, in_channels: int, image_size: tuple[int, int], sequence_length: int | None = None
) -> nn.Module:
    """Build a registered model, or call ``package.module:factory``.

    A user factory must be an ``nn.Module`` subclass or a Python function of a module outside the
    standard library; it is called with those of the keyword arguments ``num_classes``,
    ``in_channels``, ``image_size`` and (for a sequence dataset) ``sequence_length`` it names as
    parameters (any other parameter needs a default). A built-in builder always gets the first
    three and ``sequence_length`` when it is set and the builder names it.

    Raises:
        ModelError: unknown name (listing the known ones), import failure, a factory that is not
            allowed or needs other arguments, anything the factory raises, or a result that is not
            an ``nn.Module``.
    """
    geometry: dict[str, object] = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if sequence_length is not None:  # absent for images, so a factory requiring it fails with a clear message
        geometry["sequence_length"] = sequence_length
    if ":" in name:
        model = _call_factory(name, _import_factory(name), geometry)
    else:
        if name not in _MODELS:
            raise ModelError(f"unknown model {name!r}; known: {', '.join(list_models())}")
        builder = _MODELS[name]
        if "sequence_length" in geometry and not _takes(builder, "sequence_length"):
            del geometry["sequence_length"]  # image models ignore it (and fail on tokens with a clear error)
        model = builder(**geometry)
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {name!r}: the builder returned {type(model).__name__}, not an nn.Module")
    return model
