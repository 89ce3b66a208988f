"""dyninfer: interpretable neural network decoupling with a dynamic-inference CPU engine."""
from .nn import ArchitectureControl, DecoupleError, calculation_path, decouple, gates
from .models import create_model, list_models
from .errors import UnsupportedLayerError
from .engine import CompiledModel, compile

__version__ = "0.1.0"


def load(path):
    """A verified dyninfer.CompiledModel from an artefact written by engine.save (dyninfer.deploy)."""
    from .deploy import load as _load
    return _load(path)


__all__ = ["ArchitectureControl", "DecoupleError", "calculation_path", "decouple", "gates", "create_model",
           "list_models", "UnsupportedLayerError", "CompiledModel", "compile", "load", "__version__"]
