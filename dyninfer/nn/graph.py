"""One table of graph ops: what a torch.fx node *is*, whatever spelling the model used.

decouple(), count_macs() and the engine's planner all read nodes through :func:`classify`, so the
three cannot disagree about what a node is. A model may write an op as a module (``nn.ReLU()``),
a function (``F.relu``, ``torch.relu``, ``torch.relu_``) or a tensor method (``x.relu()``); each
becomes one :class:`NodeOp` with a kind and its arguments by name, defaults filled in:

    kind               spellings                                                 params
    conv               nn.Conv2d; F.conv2d / torch.conv2d                        (module) / weight, bias, stride, padding, dilation, groups
    batch_norm         nn.BatchNorm2d (any _BatchNorm); F.batch_norm              (module) / weight
    relu               nn.ReLU; F.relu, torch.relu, torch.relu_; x.relu(), x.relu_()
    clamp              nn.ReLU6, nn.Hardtanh; F.relu6, F.hardtanh                 lo, hi
    hardswish          nn.Hardswish; F.hardswish
    silu               nn.SiLU; F.silu
    hardsigmoid        nn.Hardsigmoid; F.hardsigmoid
    sigmoid            nn.Sigmoid; torch.sigmoid, F.sigmoid; x.sigmoid()
    linear             nn.Linear; F.linear                                        (module) / weight
    max_pool           nn.MaxPool2d; F.max_pool2d, torch.max_pool2d               kernel_size, stride, padding, dilation, ceil_mode, return_indices
    avg_pool           nn.AvgPool2d; F.avg_pool2d                                 kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    adaptive_avg_pool  nn.AdaptiveAvgPool2d; F.adaptive_avg_pool2d               output_size
    mean               x.mean(dims, keepdim), torch.mean(x, dims, keepdim)        dims (normalised >= 0), keepdim
    add / sub / mul    +, +=, torch.add, x.add(_) ... (two operands)              operands
    cat                torch.cat, torch.concat, torch.concatenate                 tensors, dim
    flatten            nn.Flatten; torch.flatten; x.flatten(...)                  start_dim, end_dim
    reshape            x.view(...), x.reshape(...), torch.reshape                 (the planner checks the output shape)
    identity           nn.Identity; nn.Dropout*/F.dropout* (eval); x.contiguous/clone/detach   training (dropout)
    gate               dyninfer ArchitectureControl
    follow             dyninfer FollowGate (a depthwise unit masked by its input's gate)
    shortcut           dyninfer ShortcutA
    shape              x.size(), x.dim(), x.shape, getitem on sizes              (no tensor)
    unknown            anything else (each consumer says what it does with it)
    placeholder, get_attr, output   fx's own node kinds

``NodeOp.x`` is the op's main tensor input (its first argument) where it has one.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["NodeOp", "classify", "match_se", "KINDS", "UNIT_ACTIVATIONS"]

KINDS = ("conv", "batch_norm", "relu", "clamp", "hardswish", "silu", "hardsigmoid", "sigmoid", "follow", "linear", "max_pool", "avg_pool", "adaptive_avg_pool", "mean", "add", "sub",
         "mul", "cat", "flatten", "reshape", "identity", "gate", "shortcut", "shape", "unknown",
         "placeholder", "get_attr", "output")

# The activations a conv [-> BN] unit may end with: decouple gates after them, the planner fuses them
# into the conv's epilogue (compiler.planner._ACT_CODE names one engine code for each).
UNIT_ACTIVATIONS = ("relu", "clamp", "hardswish", "silu")


@dataclass(frozen=True)
class NodeOp:
    kind: str
    x: Any = None                       # main tensor input (an fx.Node) or None
    params: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None     # the module of a call_module node
    label: str = ""                     # how the model spelled it: 'ReLU', 'relu', 'Tensor.relu_'


# Parameter lists of the functional spellings (name, default); the first entry is the tensor input.
_REQ = object()
_SIG: dict[str, tuple[tuple[str, Any], ...]] = {
    "conv2d": (("input", _REQ), ("weight", _REQ), ("bias", None), ("stride", 1), ("padding", 0), ("dilation", 1),
               ("groups", 1)),
    "batch_norm": (("input", _REQ), ("running_mean", _REQ), ("running_var", _REQ), ("weight", None), ("bias", None),
                   ("training", False), ("momentum", 0.1), ("eps", 1e-5)),
    "relu": (("input", _REQ), ("inplace", False)),
    "hardtanh": (("input", _REQ), ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)),
    "linear": (("input", _REQ), ("weight", _REQ), ("bias", None)),
    "max_pool2d": (("input", _REQ), ("kernel_size", _REQ), ("stride", None), ("padding", 0), ("dilation", 1),
                   ("ceil_mode", False), ("return_indices", False)),
    "avg_pool2d": (("input", _REQ), ("kernel_size", _REQ), ("stride", None), ("padding", 0), ("ceil_mode", False),
                   ("count_include_pad", True), ("divisor_override", None)),
    "adaptive_avg_pool2d": (("input", _REQ), ("output_size", _REQ)),
    "mean": (("input", _REQ), ("dim", None), ("keepdim", False), ("dtype", None)),
    "flatten": (("input", _REQ), ("start_dim", 0), ("end_dim", -1)),
    "cat": (("tensors", _REQ), ("dim", 0)),
    "dropout": (("input", _REQ), ("p", 0.5), ("training", True), ("inplace", False)),
    "add": (("input", _REQ), ("other", _REQ), ("alpha", 1)),
}


def _bind(sig: str, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Arguments of a call by parameter name, defaults filled in; None when they do not fit."""
    names = _SIG[sig]
    out: dict[str, Any] = {}
    if len(args) > len(names):
        return None
    for (name, _), a in zip(names, args):
        out[name] = a
    for k, v in kwargs.items():
        if k in out or k not in {n for n, _ in names}:
            return None
        out[k] = v
    for name, default in names:
        if name not in out:
            if default is _REQ:
                return None
            out[name] = default
    return out


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_CONV_FUNCS = {F.conv2d, torch.conv2d}
_MAXPOOL_FUNCS = {F.max_pool2d, torch.max_pool2d}
_AVGPOOL_FUNCS = {F.avg_pool2d}
_ADAPTIVE_FUNCS = {F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d}
_DROPOUT_FUNCS = {F.dropout, F.dropout2d, F.dropout1d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_SUB_FUNCS = {operator.sub, operator.isub, torch.sub}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_CAT_FUNCS = {torch.cat, torch.concat, getattr(torch, "concatenate", torch.cat)}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _dims(dim: Any, rank: int | None) -> tuple[int, ...] | None:
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not all(isinstance(d, int) for d in dims):
        return None
    if rank is None:
        return tuple(sorted(dims)) if all(d >= 0 for d in dims) else None
    return tuple(sorted(d % rank for d in dims))


def _rank(node: Any) -> int | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(meta, "shape", None)
    return len(shape) if shape is not None else None


def _binary(kind: str, label: str, args: tuple, kwargs: dict) -> NodeOp:
    alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
    operands = tuple(args[:2])
    extra = {k: v for k, v in kwargs.items() if k != "alpha"}
    if len(operands) != 2 or extra or alpha != 1:
        return NodeOp("unknown", args[0] if args else None, {"why": "only two-operand forms are understood"},
                      label=label)
    return NodeOp(kind, operands[0], {"operands": operands}, label=label)


def _module_op(node: fx.Node, m: nn.Module) -> NodeOp:
    from .gates import ArchitectureControl, FollowGate
    from .layers import ShortcutA

    label = type(m).__name__
    x = node.args[0] if node.args else None
    if isinstance(m, ArchitectureControl):
        return NodeOp("gate", x, {}, m, label)
    if isinstance(m, ShortcutA):
        return NodeOp("shortcut", x, {}, m, label)
    if isinstance(m, FollowGate):
        return NodeOp("follow", x, {}, m, label)
    if isinstance(m, nn.Conv2d):
        return NodeOp("conv", x, {}, m, label)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return NodeOp("batch_norm", x, {}, m, label)
    if isinstance(m, nn.ReLU):
        return NodeOp("relu", x, {}, m, label)
    if isinstance(m, nn.Hardswish):
        return NodeOp("hardswish", x, {}, m, label)
    if isinstance(m, nn.SiLU):
        return NodeOp("silu", x, {}, m, label)
    if isinstance(m, nn.Hardsigmoid):
        return NodeOp("hardsigmoid", x, {}, m, label)
    if isinstance(m, nn.Sigmoid):
        return NodeOp("sigmoid", x, {}, m, label)
    if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return NodeOp("clamp", x, {"lo": float(m.min_val), "hi": float(m.max_val)}, m, label)
    if isinstance(m, nn.Linear):
        return NodeOp("linear", x, {}, m, label)
    if isinstance(m, nn.MaxPool2d):
        return NodeOp("max_pool", x, dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                          dilation=m.dilation, ceil_mode=m.ceil_mode,
                                          return_indices=m.return_indices), m, label)
    if isinstance(m, nn.AvgPool2d):
        return NodeOp("avg_pool", x, dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                          ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                                          divisor_override=m.divisor_override), m, label)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return NodeOp("adaptive_avg_pool", x, {"output_size": m.output_size}, m, label)
    if isinstance(m, nn.Flatten):
        return NodeOp("flatten", x, {"start_dim": m.start_dim, "end_dim": m.end_dim}, m, label)
    if isinstance(m, nn.Identity):
        return NodeOp("identity", x, {}, m, label)
    if isinstance(m, _DROPOUT_MODULES):
        return NodeOp("identity", x, {"training": m.training}, m, label)
    return NodeOp("unknown", x, {}, m, label)


def _function_op(node: fx.Node) -> NodeOp:
    t, args, kwargs = node.target, node.args, dict(node.kwargs)
    label = _name(t)
    x = args[0] if args else kwargs.get("input")

    def bound(sig: str, kind: str, keep: tuple[str, ...]) -> NodeOp:
        b = _bind(sig, args, kwargs)
        if b is None:
            return NodeOp("unknown", x, {"why": f"arguments of {label} not understood"}, label=label)
        return NodeOp(kind, b.get("input"), {k: b[k] for k in keep}, label=label)

    if t in _RELU_FUNCS:
        return bound("relu", "relu", ())
    if t is F.hardswish:
        return bound("relu", "hardswish", ())
    if t is F.silu:
        return bound("relu", "silu", ())
    if t is F.hardsigmoid:
        return bound("relu", "hardsigmoid", ())
    if t in (torch.sigmoid, F.sigmoid):
        return NodeOp("sigmoid", x, {}, label=label)
    if t is F.relu6:
        b = _bind("relu", args, kwargs)
        return NodeOp("clamp", b["input"], {"lo": 0.0, "hi": 6.0}, label=label) if b else \
            NodeOp("unknown", x, {"why": "arguments of relu6 not understood"}, label=label)
    if t is F.hardtanh:
        b = _bind("hardtanh", args, kwargs)
        if b is None or not all(isinstance(b[k], (int, float)) for k in ("min_val", "max_val")):
            return NodeOp("unknown", x, {"why": "arguments of hardtanh not understood"}, label=label)
        return NodeOp("clamp", b["input"], {"lo": float(b["min_val"]), "hi": float(b["max_val"])}, label=label)
    if t in _CONV_FUNCS:
        return bound("conv2d", "conv", ("weight", "bias", "stride", "padding", "dilation", "groups"))
    if t is F.batch_norm:
        return bound("batch_norm", "batch_norm", ("weight", "training"))
    if t is F.linear:
        return bound("linear", "linear", ("weight", "bias"))
    if t in _MAXPOOL_FUNCS:
        return bound("max_pool2d", "max_pool", ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                                "return_indices"))
    if t in _AVGPOOL_FUNCS:
        return bound("avg_pool2d", "avg_pool", ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                                "divisor_override"))
    if t in _ADAPTIVE_FUNCS:
        return bound("adaptive_avg_pool2d", "adaptive_avg_pool", ("output_size",))
    if t is torch.mean:
        return _mean(node, _bind("mean", args, kwargs), label)
    if t is torch.flatten:
        return bound("flatten", "flatten", ("start_dim", "end_dim"))
    if t is torch.reshape:
        return NodeOp("reshape", x, {}, label=label)
    if t in _CAT_FUNCS:
        b = _bind("cat", args, kwargs)
        if b is None or not isinstance(b["tensors"], (list, tuple)):
            return NodeOp("unknown", None, {"why": "arguments of cat not understood"}, label=label)
        return NodeOp("cat", None, {"tensors": tuple(b["tensors"]), "dim": b["dim"]}, label=label)
    if t in _DROPOUT_FUNCS:
        b = _bind("dropout", args, kwargs)
        if b is None:
            return NodeOp("unknown", x, {"why": "arguments of dropout not understood"}, label=label)
        return NodeOp("identity", b["input"], {"training": bool(b["training"])}, label=label)
    if t in _ADD_FUNCS:
        return _binary("add", label, args, kwargs)
    if t in _SUB_FUNCS:
        return _binary("sub", label, args, kwargs)
    if t in _MUL_FUNCS:
        return _binary("mul", label, args, kwargs)
    if t is getattr or t is operator.getitem:
        return NodeOp("shape", x, {}, label=label)
    return NodeOp("unknown", x, {}, label=label)


def _mean(node: fx.Node, b: dict | None, label: str) -> NodeOp:
    if b is None or b.get("dtype") is not None:
        return NodeOp("unknown", node.args[0] if node.args else None, {"why": "arguments of mean not understood"},
                      label=label)
    dims = _dims(b["dim"], _rank(b["input"]))
    if dims is None:
        return NodeOp("unknown", b["input"], {"why": "mean over all or unknown dimensions"}, label=label)
    return NodeOp("mean", b["input"], {"dims": dims, "keepdim": bool(b["keepdim"])}, label=label)


def _method_op(node: fx.Node) -> NodeOp:
    t, args, kwargs = node.target, node.args, dict(node.kwargs)
    label = f"Tensor.{t}"
    x = args[0] if args else None
    if t in ("relu", "relu_"):
        return NodeOp("relu", x, {}, label=label)
    if t in ("sigmoid", "sigmoid_"):
        return NodeOp("sigmoid", x, {}, label=label)
    if t in _IDENTITY_METHODS:
        return NodeOp("identity", x, {}, label=label)
    if t in ("size", "dim"):
        return NodeOp("shape", x, {}, label=label)
    if t in ("view", "reshape"):
        return NodeOp("reshape", x, {}, label=label)
    if t == "flatten":
        b = _bind("flatten", args, kwargs)
        if b is None:
            return NodeOp("unknown", x, {"why": "arguments of flatten not understood"}, label=label)
        return NodeOp("flatten", x, {"start_dim": b["start_dim"], "end_dim": b["end_dim"]}, label=label)
    if t == "mean":
        return _mean(node, _bind("mean", args, kwargs), label)
    if t in ("add", "add_"):
        return _binary("add", label, args, kwargs)
    if t in ("sub", "sub_"):
        return _binary("sub", label, args, kwargs)
    if t in ("mul", "mul_"):
        return _binary("mul", label, args, kwargs)
    return NodeOp("unknown", x, {}, label=label)


def classify(node: fx.Node, modules: dict[str, nn.Module]) -> NodeOp:
    """What ``node`` computes (see the module docstring); ``modules`` is dict(gm.named_modules())."""
    if node.op == "call_module":
        return _module_op(node, modules[node.target])
    if node.op == "call_function":
        return _function_op(node)
    if node.op == "call_method":
        return _method_op(node)
    return NodeOp(node.op, None, {}, label=node.op)  # placeholder, get_attr, output


def match_se(node: fx.Node, modules: dict[str, nn.Module]) -> dict | None:
    """Squeeze-and-excitation ``x * gate(fc2([relu | silu](fc1(GAP(x)))))`` ending at the product ``node``:
    gate hardsigmoid or sigmoid, fc1 / fc2 1x1 convs as torchvision's SqueezeExcitation writes them,
    GAP an adaptive average pool to 1x1 or a spatial mean with keepdim, every inner node used once.
    Returns {"x", "fc1", "fc2" (modules), "fc1_node", "fc2_node", "act1" (0 none, 1 ReLU, 2 SiLU),
    "gate_act" (0 hardsigmoid,
    1 sigmoid), "nodes" (the inner nodes)}, or None. decouple() leaves the two FCs ungated and the
    planner runs the block as one op."""
    op = classify(node, modules)
    if op.kind != "mul" or not all(isinstance(a, fx.Node) for a in op.params["operands"]):
        return None

    def conv1x1(n: Any) -> bool:
        m = modules.get(n.target) if isinstance(n, fx.Node) and n.op == "call_module" else None
        return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and len(n.users) == 1

    a, b = op.params["operands"]
    for x, sig in ((a, b), (b, a)):
        sop = classify(sig, modules)
        if sop.kind not in ("hardsigmoid", "sigmoid") or len(sig.users) != 1 or not conv1x1(sop.x):
            continue
        c2 = sop.x
        a1 = c2.args[0]
        a1_kind = classify(a1, modules).kind if isinstance(a1, fx.Node) else None
        act1 = a1_kind in ("relu", "silu") and len(a1.users) == 1
        c1 = classify(a1, modules).x if act1 else a1
        if not conv1x1(c1) or not isinstance(c1.args[0], fx.Node):
            continue
        pool = c1.args[0]
        pop = classify(pool, modules)
        if len(pool.users) != 1 or pop.x is not x:
            continue
        if not (pop.kind == "adaptive_avg_pool" and pop.params["output_size"] in (1, (1, 1), [1, 1])
                or pop.kind == "mean" and pop.params["dims"] == (2, 3) and pop.params["keepdim"]):
            continue
        return {"x": x, "fc1": modules[c1.target], "fc2": modules[c2.target], "fc1_node": c1, "fc2_node": c2,
                "act1": (1 if a1_kind == "relu" else 2) if act1 else 0, "gate_act": 0 if sop.kind == "hardsigmoid" else 1,
                "nodes": [pool, c1] + ([a1] if act1 else []) + [c2, sig]}
    return None
