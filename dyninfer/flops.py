"""Dense and per-sample effective multiply-accumulates (MACs).

``count_macs(model, x)`` traces ``model`` with torch.fx (dyninfer.nn.DyninferTracer: gates and
ShortcutA stay single nodes), runs it once in eval mode with shape propagation, and returns

* ``dense``: MACs per sample with fvcore's FlopCountAnalysis conventions, for a model in eval
  mode: one MAC per conv / linear multiply-add; batch_norm 2 per element with affine parameters
  (1 without) -- fvcore's *inference* count (in training mode fvcore would count 5); one per
  input element of adaptive_avg_pool2d; nothing for residual adds, ReLU, concatenation, max_pool2d
  and avg_pool2d (fvcore has no handle for the two pools and counts them 0, so we do too).
  An ArchitectureControl gate costs GAP (C·H·W, the adaptive_avg_pool2d convention) + fc1 (C·C/γ)
  + fc2 (C/γ·N); its y_mean (a training diagnostic) and the y·z mask multiply (a real engine skips
  channels instead of multiplying) cost nothing. ``fvcore_analysis(model, x)`` returns fvcore's own
  analysis with FVCORE_HANDLES set, and ``count_macs(...).dense * B`` equals its ``.total()``.
* ``effective``: (B,) MACs per sample from the gate decisions of that forward. Every traced value
  carries a per-sample channel *liveness* (B, C) bool: False = channel known to be exactly zero.

      conv             kept_out × kept_in × kh·kw·H_out·W_out (per group); kept_out = channels its
                       gate selected (all if ungated); kept_in = live input channels; its output
                       liveness is its kept set
      batch_norm       after a conv: keeps the conv's liveness (the gate of a unit applies after
                       BN and zeroes unselected channels, so BN only runs on kept channels);
                       cost 2 (or 1) × live channels × H·W. A BN not fed by a conv: all live.
      gate             GAP and fc1 over live input channels only (dead channels add 0 to s and
                       to fc1), fc2 dense; output liveness = unit liveness AND z > 0
      adaptive_avg_pool2d  live input channels × H_in·W_in; keeps liveness (so does a mean over
                       the spatial dims, x.mean((2, 3)), which is the same global average pool)
      linear           live input features × out_features; output all live
      relu, max/avg pool, dropout, identity, contiguous   keep liveness, 0 MACs
      clamp (ReLU6, Hardtanh)  keeps liveness when its range holds 0, 0 MACs
      hardswish, silu  keep liveness; hardsigmoid, sigmoid: all live (0 maps to 0.5); 0 MACs
      FollowGate       liveness AND its gate's z > 0 (a depthwise unit after a gated one), 0 MACs
      add / sub        union of the tensor operands (a nonzero scalar makes everything live), 0 MACs
      mul              intersection of the tensor operands, 0 MACs
      cat              concatenation along dim 1 (union along spatial dims), 0 MACs
      flatten(1)       channel liveness repeated over H·W features, 0 MACs (also view/reshape
                       to (B, C·H·W); any other reshape: all live)
      ShortcutA        subsampled input, the 2·pad zero channels dead, 0 MACs

  With every gate open all channels stay live and ``effective == dense`` exactly.
  Every spelling of these ops (module, function, tensor method) is recognised through the one op
  table decouple() and the engine's planner read too (dyninfer.nn.graph.classify).
  Any other op is counted 0 MACs with all outputs live and is listed in ``report.unsupported``
  (``strict=True`` raises instead): nothing is skipped silently. Ops deliberately treated as
  zero-cost are listed in ``report.zero_cost``.

Units: MACs (the paper's "FLOPs"). For dense CIFAR ResNet-56 at 32×32: 125,485,056 conv +
1,064,960 BN + 4,096 pool + 640 linear = 126,554,752 (fvcore, eval mode).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from .nn.decouple import gate_name, trace
from .nn.graph import NodeOp, classify
from .nn.gates import ArchitectureControl

__all__ = ["count_macs", "MacReport", "LayerMacs", "FVCORE_HANDLES", "fvcore_analysis"]

# fvcore ops counted 0 on purpose in dyninfer models (fvcore would report them unsupported and
# count 0 anyway; declaring them makes .unsupported_ops() empty, so a new unsupported op stands out).
FVCORE_HANDLES: dict[str, None] = {
    "aten::add": None,         # residual additions (fvcore convention: free)
    "aten::add_": None,
    "aten::max_pool2d": None,  # fvcore has no pool handle: 0
    "aten::avg_pool2d": None,
    "aten::pad": None,         # ShortcutA zero channels
    "aten::mean": None,        # ArchitectureControl.y_mean (training diagnostic, not inference)
    "aten::mul": None,         # ArchitectureControl y·z mask (an engine skips the channels)
    "aten::topk": None,        # force_keep selection (comparisons/selection are free)
    "aten::scatter_": None,
    "aten::hardtanh": None,    # ReLU6 / Hardtanh (activations are free, like ReLU)
    "aten::hardtanh_": None,
    "aten::hardswish": None,   # MobileNetV3's activations and SE gate
    "aten::hardswish_": None,
    "aten::hardsigmoid": None,
    "aten::hardsigmoid_": None,
    "aten::sigmoid": None,
    "aten::silu": None,
    "aten::silu_": None,
    "aten::dropout": None,     # identity in eval
    "aten::dropout_": None,
}


def fvcore_analysis(model: nn.Module, x: Tensor):
    """fvcore FlopCountAnalysis of ``model`` (put it in eval mode first to match count_macs) with
    FVCORE_HANDLES set and fvcore's warnings off."""
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model, x).set_op_handle(**FVCORE_HANDLES)
    fa.unsupported_ops_warnings(False)
    fa.uncalled_modules_warnings(False)
    return fa


@dataclass(frozen=True)
class LayerMacs:
    """One cost-bearing node: ``dense`` MACs per sample and ``effective`` (B,) int64."""

    name: str  # module path for modules ('layer1.0.conv1', 'layer1.0.conv1_gate'), else node name
    op: str    # 'conv' | 'linear' | 'batch_norm' | 'adaptive_avg_pool2d' | 'gate'
    dense: int
    effective: Tensor

    @property
    def effective_mean(self) -> float:
        return self.effective.double().mean().item()


@dataclass(frozen=True)
class MacReport:
    dense: int             # MACs per sample, fvcore conventions (eval mode)
    effective: Tensor      # (B,) int64 MACs per sample from the gate decisions
    layers: tuple[LayerMacs, ...]
    zero_cost: dict[str, int] = field(default_factory=dict)    # op -> nodes counted 0 on purpose
    unsupported: dict[str, int] = field(default_factory=dict)  # op -> nodes with no rule (counted 0)

    @property
    def batch(self) -> int:
        return self.effective.shape[0]

    @property
    def ratio(self) -> Tensor:
        """(B,) effective / dense."""
        return self.effective.double() / self.dense

    def dense_by_op(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for layer in self.layers:
            out[layer.op] += layer.dense
        return dict(out)

    def effective_by_op(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for layer in self.layers:
            out[layer.op] = out.get(layer.op, torch.zeros_like(self.effective)) + layer.effective
        return out

    def summary(self, layers: bool = True) -> str:
        eff = self.effective.double()
        lines = [f"MACs per sample (fvcore conventions, eval), batch {self.batch}",
                 f"  dense      {self.dense:>15,d}",
                 f"  effective  {eff.mean().item():>15,.0f} mean  (min {int(eff.min()):,d}, max {int(eff.max()):,d})"
                 f"  = {self.ratio.mean().item():.3f} of dense"]
        eff_op = self.effective_by_op()
        for op, d in sorted(self.dense_by_op().items(), key=lambda kv: -kv[1]):
            lines.append(f"  {op:<20s} dense {d:>15,d}  effective {eff_op[op].double().mean().item():>15,.0f}")
        if self.zero_cost:
            lines.append("  zero-cost ops: " + ", ".join(f"{k}×{v}" for k, v in sorted(self.zero_cost.items())))
        if self.unsupported:
            ops = ", ".join(f"{k}×{v}" for k, v in sorted(self.unsupported.items()))
            lines.append(f"  UNSUPPORTED (counted 0): {ops}")
        if layers:
            w = max((len(layer.name) for layer in self.layers), default=4)
            lines.append(f"  {'layer':<{w}s}  {'op':<20s} {'dense':>13s} {'eff. mean':>13s} {'ratio':>6s}")
            for layer in self.layers:
                r = layer.effective_mean / layer.dense if layer.dense else 1.0
                lines.append(f"  {layer.name:<{w}s}  {layer.op:<20s} {layer.dense:>13,d} "
                             f"{layer.effective_mean:>13,.0f} {r:>6.3f}")
        return "\n".join(lines)


# ---- node classification ---------------------------------------------------------------------

def _shape(node: Any) -> torch.Size | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _numel(shape: torch.Size) -> int:
    return math.prod(shape[1:])  # per sample


def _scalar_zero(a: Any) -> bool:
    return isinstance(a, (int, float)) and a == 0


class _Counter:
    def __init__(self, gm: fx.GraphModule, batch: int, strict: bool):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.batch = batch
        self.strict = strict
        self.live: dict[fx.Node, Tensor] = {}  # (B, C) bool per tensor-valued node of dim >= 2
        self.layers: list[LayerMacs] = []
        self.zero_cost: Counter[str] = Counter()
        self.unsupported: Counter[str] = Counter()
        self.conv_nodes: set[fx.Node] = set()
        # conv path -> its gate module (decouple() names the gate '<conv path>_gate')
        self.gate_of: dict[str, ArchitectureControl] = {}
        for path, m in self.modules.items():
            if isinstance(m, nn.Conv2d) and isinstance(self.modules.get(gate_name(path)), ArchitectureControl):
                self.gate_of[path] = self.modules[gate_name(path)]

    # liveness helpers
    def all_live(self, shape: torch.Size | None) -> Tensor | None:
        if shape is None or len(shape) < 2:
            return None
        return torch.ones(shape[0], shape[1], dtype=torch.bool)

    def get(self, a: Any) -> Tensor | None:
        if isinstance(a, fx.Node):
            if a in self.live:
                return self.live[a]
            return self.all_live(_shape(a))
        return None

    def add_layer(self, node: fx.Node, op: str, dense: int, eff: Tensor) -> None:
        name = node.target if node.op == "call_module" else node.name
        self.layers.append(LayerMacs(name, op, int(dense), eff.to(torch.int64)))

    def zero(self, node: fx.Node, label: str, live: Tensor | None) -> None:
        self.zero_cost[label] += 1
        self.set(node, live)

    def set(self, node: fx.Node, live: Tensor | None) -> None:
        shape = _shape(node)
        if live is not None and shape is not None and len(shape) >= 2 and live.shape == (shape[0], shape[1]):
            self.live[node] = live
        elif shape is not None and len(shape) >= 2:
            self.live[node] = self.all_live(shape)

    # cost rules
    def conv(self, node: fx.Node, x: fx.Node, weight_shape: torch.Size, groups: int, path: str | None) -> None:
        out = _shape(node)
        cout, cin_g, kh, kw = weight_shape
        spatial = kh * kw * math.prod(out[2:])
        dense = cout * cin_g * spatial
        lin = self.get(x)  # (B, Cin)
        gate = self.gate_of.get(path) if path is not None else None
        if gate is not None:
            if gate.z is None or gate.z.shape != (self.batch, cout):
                raise ValueError(f"count_macs: gate '{gate_name(path)}' of conv '{path}' has no decisions "
                                 f"for this batch (z={None if gate.z is None else tuple(gate.z.shape)})")
            kout = gate.z.detach() > 0  # (B, Cout)
        else:
            kout = torch.ones(self.batch, cout, dtype=torch.bool)
        g = groups
        kin_g = lin.reshape(self.batch, g, -1).sum(2)   # (B, G) live inputs per group
        kout_g = kout.reshape(self.batch, g, -1).sum(2)  # (B, G) kept outputs per group
        eff = (kin_g * kout_g).sum(1) * spatial
        self.add_layer(node, "conv", dense, eff)
        self.conv_nodes.add(node)
        self.set(node, kout)

    def batch_norm(self, node: fx.Node, x: fx.Node, affine: bool) -> None:
        shape = _shape(node)
        per = 2 if affine else 1  # fvcore batchnorm_flop_jit, eval mode
        spatial = math.prod(shape[2:])
        live = self.get(x) if x in self.conv_nodes else self.all_live(shape)
        self.add_layer(node, "batch_norm", per * shape[1] * spatial, per * live.sum(1) * spatial)
        self.set(node, live)

    def linear(self, node: fx.Node, x: fx.Node, out_features: int) -> None:
        in_shape = _shape(x)
        dense = _numel(in_shape) * out_features
        if len(in_shape) == 2:
            eff = self.get(x).sum(1) * out_features
        else:
            eff = torch.full((self.batch,), dense)
        self.add_layer(node, "linear", dense, eff)
        self.set(node, None)

    def adaptive_avg_pool(self, node: fx.Node, x: fx.Node) -> None:
        in_shape = _shape(x)
        spatial = math.prod(in_shape[2:])
        lin = self.get(x)
        self.add_layer(node, "adaptive_avg_pool2d", _numel(in_shape), lin.sum(1) * spatial)
        self.set(node, lin)

    def gate(self, node: fx.Node, m: ArchitectureControl) -> None:
        x = node.args[0]
        xs = _shape(x)
        hidden = m.fc1.out_features
        lin = self.get(x).sum(1)  # (B,)
        spatial = math.prod(xs[2:])
        dense = xs[1] * spatial + xs[1] * hidden + hidden * m.out_channels
        eff = lin * spatial + lin * hidden + hidden * m.out_channels
        self.add_layer(node, "gate", dense, eff)
        if len(node.args) > 1:
            self.set(node, self.get(node.args[1]) & (m.z.detach() > 0))
        else:
            self.set(node, None)

    def unknown(self, node: fx.Node, label: str) -> None:
        if self.strict:
            raise ValueError(f"count_macs: node '{node.name}' ({label}) has no MAC rule")
        self.unsupported[label] += 1
        self.set(node, None)

    # dispatch: every spelling of an op reaches the same rule (dyninfer.nn.graph.classify)
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.node(node, classify(node, self.modules))

    def node(self, node: fx.Node, op: NodeOp) -> None:
        k, x, p, m, label = op.kind, op.x, op.params, op.module, op.label
        if k in ("placeholder", "output", "get_attr"):
            self.set(node, None)
        elif k == "gate":
            self.gate(node, m)
        elif k == "conv":
            if m is not None:
                self.conv(node, x, m.weight.shape, m.groups, node.target)
            else:
                self.conv(node, x, _shape(p["weight"]), p["groups"], None)
        elif k == "batch_norm":
            self.batch_norm(node, x, m.affine if m is not None else p["weight"] is not None)
        elif k == "linear":
            self.linear(node, x, m.out_features if m is not None else _shape(p["weight"])[0])
        elif k == "adaptive_avg_pool":
            self.adaptive_avg_pool(node, x)
        elif k == "mean":
            self.mean(node, x, p["dims"], label)
        elif k in ("relu", "max_pool", "avg_pool", "identity"):
            self.zero(node, label, self.get(x))
        elif k in ("hardswish", "silu"):  # both map 0 to 0
            self.zero(node, label, self.get(x))
        elif k in ("hardsigmoid", "sigmoid"):  # 0 maps to 0.5: every channel live
            self.zero(node, label, None)
        elif k == "clamp":  # zero stays zero only when the clamp range holds it
            self.zero(node, label, self.get(x) if p["lo"] <= 0.0 <= p["hi"] else None)
        elif k == "follow":
            z = m.gate.z
            lin = self.get(x)
            self.zero(node, label, lin & (z.detach() > 0) if z is not None and lin is not None
                      and z.shape == lin.shape else lin)
        elif k == "shortcut":
            lin = self.get(x)
            pad = torch.zeros(lin.shape[0], m.pad_channels, dtype=torch.bool)
            self.zero(node, label, torch.cat([pad, lin, pad], dim=1))
        elif k == "flatten":
            self.flatten(node, x, p["start_dim"], label)
        elif k in ("add", "sub"):
            args = p["operands"]
            lives = [self.get(a) for a in args if isinstance(a, fx.Node)]
            nonzero_scalar = any(not isinstance(a, fx.Node) and not _scalar_zero(a) for a in args)
            self.zero(node, label, None if nonzero_scalar else _combine(lives, torch.logical_or))
        elif k == "mul":
            lives = [self.get(a) for a in p["operands"] if isinstance(a, fx.Node)]
            self.zero(node, label, _combine(lives, torch.logical_and))
        elif k == "cat":
            self.cat(node, label)
        elif k == "reshape":
            self.zero(node, label, self.reshaped(node, x))
        elif k == "shape":
            self.zero(node, label, None)
        else:
            self.unknown(node, label)

    def mean(self, node: fx.Node, x: fx.Node, dims: tuple[int, ...], label: str) -> None:
        """A mean over the spatial dims is a global average pool (fvcore: one per input element,
        as adaptive_avg_pool2d); over other dims it has no rule."""
        xs = _shape(x)
        if xs is None or len(xs) != 4 or dims != (2, 3):
            return self.unknown(node, label)
        lin = self.get(x)
        self.add_layer(node, "adaptive_avg_pool2d", _numel(xs), lin.sum(1) * math.prod(xs[2:]))
        self.set(node, lin)

    def reshaped(self, node: fx.Node, x: fx.Node) -> Tensor | None:
        """Liveness through view/reshape: (B, C, H, W) -> (B, C·H·W) is a flatten; else all live."""
        xs, s = _shape(x), _shape(node)
        lin = self.get(x)
        if xs is not None and s is not None and lin is not None and len(xs) >= 2 and len(s) == 2 \
                and s[0] == xs[0] and s[1] == _numel(xs):
            return lin.repeat_interleave(math.prod(xs[2:]), dim=1)
        return None

    def cat(self, node: fx.Node, label: str) -> None:
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        shape = _shape(node)
        if shape is None:
            return self.unknown(node, label)
        dim = dim % len(shape)
        lives = [self.get(a) for a in tensors]
        if any(lv is None for lv in lives):
            live = None
        elif dim in (0, 1):
            live = torch.cat(lives, dim=dim)  # (B, ΣC) or (ΣB, C)
        else:
            live = _combine(lives, torch.logical_or)
        self.zero(node, label, live)

    def flatten(self, node: fx.Node, x: fx.Node, start_dim: int, label: str) -> None:
        xs = _shape(x)
        lin = self.get(x)
        if xs is not None and lin is not None and start_dim % len(xs) == 1:
            live = lin.repeat_interleave(math.prod(xs[2:]), dim=1)  # (B, C·H·W), channel-major like flatten
        else:
            live = None
        self.zero(node, label, live)


def _combine(lives: list[Tensor | None], op: Callable[[Tensor, Tensor], Tensor]) -> Tensor | None:
    if not lives or any(lv is None for lv in lives):
        return None
    out = lives[0]
    for lv in lives[1:]:
        if lv.shape != out.shape:
            return None  # broadcasting over channels: give up, all live
        out = op(out, lv)
    return out


@torch.no_grad()
def count_macs(model: nn.Module, x: Tensor, strict: bool = False) -> MacReport:
    """Dense (fvcore conventions) and per-sample effective MACs of ``model`` on input ``x``
    (B, C, H, W). The model runs once in eval mode (its training flags are restored); its gates
    keep the decisions of that forward. ``strict=True`` raises ValueError on an op with no rule."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"count_macs: expected a batched input tensor, got {getattr(x, 'shape', type(x))}")
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    gm.eval()
    try:
        ShapeProp(gm).propagate(x)
        counter = _Counter(gm, x.shape[0], strict)
        counter.run()
    finally:
        for m, t in was_training.items():
            m.train(t)
    layers = tuple(counter.layers)
    dense = sum(layer.dense for layer in layers)
    eff = torch.zeros(x.shape[0], dtype=torch.int64)
    for layer in layers:
        eff += layer.effective
    return MacReport(dense, eff, layers, dict(counter.zero_cost), dict(counter.unsupported))
