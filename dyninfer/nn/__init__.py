"""Gated layers: architecture controlling modules, Improved SemHash, decouple()."""
from .gates import ArchitectureControl, improved_semhash, saturating_sigmoid, topk_mask
from .decouple import (DecoupleError, DyninferTracer, calculation_path, decouple, gate_name, gates,
                       register_leaf_module, trace)
from .layers import ShortcutA

__all__ = ["ArchitectureControl", "improved_semhash", "saturating_sigmoid", "topk_mask", "DecoupleError",
           "DyninferTracer", "calculation_path", "decouple", "gate_name", "gates", "register_leaf_module",
           "trace", "ShortcutA"]
