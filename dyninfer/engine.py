"""CompiledModel: the Python face of the C++ runtime.

``engine = dyninfer.compile(model)`` turns a gated model (eval mode) into one C++ plan whose
forward runs entirely in the extension: per sample, each gate is evaluated, then each conv computes
only its kept output channels from the input channels the previous layer actually produced.
"""
from __future__ import annotations


from typing import Sequence

import torch
from torch import nn

from ._ext import load_extension
from .compiler.planner import PlanSpec, build_plan
from .errors import UnsupportedLayerError

__all__ = ["CompiledModel", "compile", "UnsupportedLayerError"]


def _default_input_shape(model: nn.Module) -> tuple[int, int, int] | None:
    name = getattr(model, "dyninfer_name", None)
    if name is None:
        return None
    from .models import model_info
    return model_info(name).input_size


class CompiledModel:
    """A compiled gated network. Call it like the model: ``engine(x)`` -> logits, or
    ``engine(x, return_path=True)`` -> (logits, path) with path (B, Σ N_l) the concatenated gate
    decisions z of every gated layer from the same run (``split_path`` names them)."""

    def __init__(self, spec: PlanSpec, gates: str, plan=None):
        if not isinstance(spec, PlanSpec):
            raise TypeError(f"CompiledModel: expected a PlanSpec, got {type(spec).__name__}")
        if gates not in ("learned", "open"):
            raise ValueError(f"CompiledModel: gates must be 'learned' or 'open', got {gates!r}")
        load_extension()
        from ._C import run
        self._run = run
        self.spec = spec
        self.gates_mode = gates
        # plan: an already built Plan of this spec (dyninfer.load passes the archived one). The plan
        # shares the spec's weight tensors (the planner made them the engine's own copies): the
        # weights are held once.
        self.plan = plan if plan is not None else torch.classes.dyninfer.Plan(spec.meta, spec.ops, spec.weights,
                                                                              spec.conv_names)
        if self.plan.path_len() != sum(spec.gate_sizes):
            raise ValueError(f"CompiledModel: the plan has {self.plan.path_len()} gate decisions per sample, "
                             f"the spec's gates {sum(spec.gate_sizes)}")
        self.input_shape = spec.input_shape
        self.output_shape = spec.output_shape
        self.gate_names = list(spec.gate_names)
        self.gate_sizes = list(spec.gate_sizes)
        self.conv_names = list(spec.conv_names)
        self._open = gates == "open"

    @classmethod
    def from_plan(cls, spec: PlanSpec, gates: str = "learned", plan=None) -> "CompiledModel":
        """An engine from a built plan description (``dyninfer.compiler.build_plan``'s PlanSpec, or
        one read back from an artefact), and optionally the already built
        ``torch.classes.dyninfer.Plan`` of it; gates "learned" or "open" (dense mode)."""
        return cls(spec, gates, plan=plan)

    @property
    def isa(self) -> str:
        return self.plan.isa()

    @property
    def precision(self) -> str:
        """"fp32" or "bf16" (see dyninfer.compile)."""
        return self.plan.precision()

    def set_precision(self, precision: str, strict: bool = False) -> "CompiledModel":
        """Switch the engine to "fp32" or "bf16" (see dyninfer.compile); returns self. Where the CPU
        lacks AVX512_BF16, warns and stays fp32, or raises RuntimeError when strict."""
        from ._C import bf16_supported
        from ._precision import choose

        has = bf16_supported()
        self.plan.set_precision(choose(precision, supported=self.isa == "avx512" and has, isa=self.isa, has_flag=has,
                                       where="dyninfer", runs="the engine", strict=strict))
        return self

    def __call__(self, x: torch.Tensor, return_path: bool = False):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"dyninfer engine: expected a torch.Tensor, got {type(x).__name__}")
        # dyninfer._C.run: the plan's run straight from pybind, GIL released; the same code as
        # torch.ops.dyninfer.run and plan.run without TorchScript's call overhead (see module.cpp).
        logits, path = self._run(self.plan, x, return_path, self._open)
        logits = logits.view(x.shape[0], *self.output_shape)
        return (logits, path) if return_path else logits

    forward = __call__

    def save(self, path, format: str = "runtime"):
        """Write this engine as one verified deployment artefact, atomically (dyninfer.deploy).

        format="runtime": the torch-free artefact (safetensors: typed plan + weights), which
        dyninfer.runtime (numpy only), libdyninfer_rt (C) and dyninfer.load read.
        format="torchscript": a TorchScript archive, for embedding the engine in scripted modules
        or loading it in C++ with torch::jit::load; dyninfer.load reads it too."""
        from .deploy import save, save_runtime
        if format == "runtime":
            return save_runtime(self, path)
        if format == "torchscript":
            return save(self, path)
        raise ValueError(f"CompiledModel.save: format must be 'runtime' or 'torchscript', got {format!r}")

    def split_path(self, path: torch.Tensor) -> dict[str, torch.Tensor]:
        """{gate path: (B, N_l) z} from the (B, Σ N_l) path tensor."""
        return dict(zip(self.gate_names, torch.split(path, self.gate_sizes, dim=1)))

    def profile(self, x: torch.Tensor, runs: int = 20) -> dict[str, float]:
        """Mean wall time (seconds) per conv over ``runs`` calls on ``x``; see profile_ops."""
        ops = self.profile_ops(x, runs)
        return {k[5:]: v for k, v in ops.items() if k.startswith("conv:")}

    def profile_ops(self, x: torch.Tensor, runs: int = 20) -> dict[str, float]:
        """Mean wall time (seconds) per engine op in execution order: "conv:<path>",
        "gate:<path>", "maxpool", ... (repeated kinds get a "#n" suffix)."""
        self.plan.set_profiling(True)
        try:
            for _ in range(runs):
                self(x)
            times = self.plan.op_times_ns()
        finally:
            self.plan.set_profiling(False)
        out: dict[str, float] = {}
        for name, t in zip(self.plan.op_names(), times):
            if name.startswith("gate:"):
                name = "gate:" + self.gate_names[int(name[5:])]
            key, n = name, 1
            while key in out:
                n += 1
                key = f"{name}#{n}"
            out[key] = t / runs / 1e9
        return out

    def __repr__(self) -> str:
        return (f"CompiledModel(input={self.input_shape}, convs={len(self.conv_names)}, gates={len(self.gate_names)}, "
                f"mode={self.gates_mode}, isa={self.isa}, precision={self.precision})")


def compile(model: nn.Module, gates: str = "learned", input_shape: Sequence[int] | None = None,
            force_keep: float | None = None, example_input: torch.Tensor | None = None,
            precision: str = "fp32", strict_precision: bool = False) -> CompiledModel:
    """Compile a (gated) model in eval mode into a CompiledModel.

    gates: "learned" evaluates every gate per sample; "open" keeps every channel (dense mode,
    the same kernels with all gates open, for comparison with dense runtimes).
    example_input: a (B, C, H, W) tensor of the inputs the engine will run, as torch.export and
    ONNX export take one; the engine runs inputs of that C x H x W at any batch size.
    input_shape: (C, H, W) instead of an example; defaults to the registered model's input size.
    force_keep: keep exactly round(force_keep·N) channels (highest gate logits) in every gated
    layer — density sweeps.
    precision: "fp32" (default) or "bf16": the ungrouped convs round their inputs (or column
    buffers) and weights to bf16 and accumulate in fp32 (AVX512_BF16 kernels); gates,
    depthwise/grouped convs, pooling and linear layers stay fp32. On a CPU
    without AVX512_BF16 the engine warns and runs fp32, or raises with strict_precision=True.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"dyninfer.compile: precision must be 'fp32' or 'bf16', got {precision!r}")
    if gates not in ("learned", "open"):
        raise ValueError(f"dyninfer.compile: gates must be 'learned' or 'open', got {gates!r}")
    if model.training:
        raise ValueError("dyninfer.compile: the model is in training mode; call model.eval() first "
                         "(the engine folds BN running statistics and uses eval-mode gates)")
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
            got = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
            raise ValueError(f"dyninfer.compile: example_input must be a (B, C, H, W) tensor, got {got}")
        ex_shape = tuple(int(d) for d in example_input.shape[1:])
        if input_shape is not None and tuple(input_shape) != ex_shape:
            raise ValueError(f"dyninfer.compile: input_shape={tuple(input_shape)} disagrees with example_input of "
                             f"shape {tuple(example_input.shape)}; pass one of them")
        input_shape = ex_shape
    shape = tuple(input_shape) if input_shape is not None else _default_input_shape(model)
    if shape is None or len(shape) != 3:
        raise ValueError("dyninfer.compile: pass example_input=x (a (B, C, H, W) tensor) or input_shape=(C, H, W) "
                         f"for models not created by dyninfer.models.create_model (got {input_shape})")
    spec = build_plan(model, shape, force_keep=force_keep)
    engine = CompiledModel.from_plan(spec, gates)
    if precision != "fp32":
        engine.set_precision(precision, strict=strict_precision)
    return engine
