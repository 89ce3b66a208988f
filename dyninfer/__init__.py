"""dyninfer: interpretable neural network decoupling with a dynamic-inference CPU engine.

The training and compile API needs torch and is imported on first use, so that
``import dyninfer.runtime`` (numpy only) works where torch is not installed.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    "ArchitectureControl": ".nn", "DecoupleError": ".nn", "calculation_path": ".nn", "decouple": ".nn",
    "gates": ".nn", "create_model": ".models", "list_models": ".models", "UnsupportedLayerError": ".errors",
    "CompiledModel": ".engine", "compile": ".engine",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dyninfer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


def load(path):
    """A verified dyninfer.CompiledModel from an artefact written by engine.save (dyninfer.deploy)."""
    from .deploy import load as _load
    return _load(path)


__all__ = ["ArchitectureControl", "DecoupleError", "calculation_path", "decouple", "gates", "create_model",
           "list_models", "UnsupportedLayerError", "CompiledModel", "compile", "load", "__version__"]
