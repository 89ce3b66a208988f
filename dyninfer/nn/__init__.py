"""Gated layers: architecture controlling modules, Improved SemHash, decouple()."""
from .gates import GATE_INITS, ArchitectureControl, FollowGate, freeze_static, improved_semhash, saturating_sigmoid, topk_mask
from .decouple import (DecoupleError, DyninferTracer, calculation_path, decouple, gate_name, gates,
                       register_leaf_module, trace)
from .layers import ShortcutA

__all__ = ["GATE_INITS", "freeze_static", "ArchitectureControl", "FollowGate", "improved_semhash", "saturating_sigmoid", "topk_mask", "DecoupleError",
           "DyninferTracer", "calculation_path", "decouple", "gate_name", "gates", "register_leaf_module",
           "trace", "ShortcutA"]
