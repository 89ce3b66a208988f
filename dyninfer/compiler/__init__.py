"""Graph -> plan compilation for the C++ engine (see planner.py)."""
from .planner import PlanSpec, build_plan

__all__ = ["PlanSpec", "build_plan"]
