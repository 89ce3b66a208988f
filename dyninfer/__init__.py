"""dyninfer: interpretable neural network decoupling with a dynamic-inference CPU engine."""
from .nn import ArchitectureControl, DecoupleError, calculation_path, decouple, gates
from .models import create_model, list_models
from .errors import UnsupportedLayerError
from .engine import CompiledModel, compile
from .deploy import load

__version__ = "0.1.0"

__all__ = ["ArchitectureControl", "DecoupleError", "calculation_path", "decouple", "gates", "create_model",
           "list_models", "UnsupportedLayerError", "CompiledModel", "compile", "load", "__version__"]
