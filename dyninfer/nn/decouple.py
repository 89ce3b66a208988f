"""decouple(): turn a plain CNN into a decoupled (gated) one with torch.fx.

A *unit* is ``conv [-> BatchNorm2d] [-> ReLU, ReLU6/Hardtanh, Hardswish or SiLU]``. Every unit except the one holding the network's
first conv and any conv that is the network's last layer gets an ArchitectureControl that reads
the unit's input. The gate is applied after the unit's ReLU, or after its BN when no ReLU follows
(the second conv of a residual block: its gate applies before the addition).

Parameter names of the model are kept; each gate lives next to its conv under
``<conv path>_gate`` so a dense checkpoint initialises the gated model with strict=False only
missing the gates.
"""
from __future__ import annotations

import operator
from typing import Iterable

import torch
import torch.fx as fx
from torch import nn

from .gates import ArchitectureControl, FollowGate
from .graph import UNIT_ACTIVATIONS, classify, match_se

__all__ = ["decouple", "DecoupleError", "DyninferTracer", "gates", "calculation_path", "gate_name", "LEAF_MODULES"]


class DecoupleError(ValueError):
    """The model cannot be decoupled; the message names the module and why."""


# Modules kept whole when tracing (their forward is not expanded into the graph).
LEAF_MODULES: tuple[type, ...] = (ArchitectureControl, FollowGate)


def register_leaf_module(cls: type) -> type:
    """Class decorator: keep ``cls`` as one node when dyninfer traces a model."""
    global LEAF_MODULES
    if cls not in LEAF_MODULES:
        LEAF_MODULES = LEAF_MODULES + (cls,)
    return cls


class DyninferTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, LEAF_MODULES):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = DyninferTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; say which model and why
        raise DecoupleError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for every spelling of ReLU (module, function, tensor method; in place or not)."""
    return classify(node, modules).kind == "relu"


def gate_name(conv_path: str) -> str:
    return conv_path + "_gate"


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _units(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node, fx.Node]]:
    """(conv node, bn node or None, node after which the gate applies) for every conv module: the
    unit is conv [-> BatchNorm2d] [-> ReLU, a clamp such as ReLU6, Hardswish or SiLU], each link its
    input's only user."""
    modules = dict(gm.named_modules())
    units = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or classify(node, modules).kind != "conv":
            continue
        end, bn = node, None
        nxt = _only_user(node)
        if nxt is not None and nxt.op == "call_module" and isinstance(modules[nxt.target], nn.BatchNorm2d):
            end = bn = nxt
            nxt = _only_user(bn)
        if nxt is not None and classify(nxt, modules).kind in UNIT_ACTIVATIONS:
            end = nxt
        units.append((node, bn, end))
    return units


_DROPOUT_MODULE = {"dropout": nn.Dropout, "dropout1d": nn.Dropout1d, "dropout2d": nn.Dropout2d,
                   "dropout3d": nn.Dropout3d, "alpha_dropout": nn.AlphaDropout,
                   "feature_alpha_dropout": nn.FeatureAlphaDropout}


def _modularise_dropout(gm: fx.GraphModule) -> None:
    """Functional dropout becomes a dropout module that follows train()/eval().

    fx records ``F.dropout(x, p, training=self.training)`` with the value ``self.training`` had
    while tracing, so the decoupled model would drop activations in eval mode (traced in
    training) or never (traced in eval). As a module it follows the decoupled model's mode."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        op = classify(node, modules)
        cls = _DROPOUT_MODULE.get(op.label)
        if op.kind != "identity" or node.op != "call_function" or cls is None:
            continue
        p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
        name, i = "dropout", 0
        while name in modules:
            i += 1
            name = f"dropout_{i}"
        mod = cls(p=float(p))
        gm.add_submodule(name, mod)
        modules[name] = mod
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (op.x,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def _is_last_layer(conv: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when no conv or linear layer runs after ``conv`` on any path to the output."""
    stack, seen = list(conv.users), set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if classify(n, modules).kind in ("conv", "linear"):
            return False
        stack.extend(n.users)
    return True


def decouple(model: nn.Module, reduction: int = 4, skip: Iterable[str] = (),
             only: Iterable[str] | None = None) -> fx.GraphModule:
    """Return a gated copy-free view of ``model``: a GraphModule sharing its parameters.

    ``skip`` names conv paths to leave ungated in addition to the first and last layer; ``only``,
    when given, names the conv paths to gate (every other conv stays ungated). A unit is
    conv [-> BatchNorm2d] [-> ReLU, ReLU6/Hardtanh, Hardswish or SiLU]; its gate applies after the unit's
    last link (a conv with bias and no BN is gated after its activation, or right after the conv);
    the two FCs of a squeeze-and-excitation block stay ungated. Grouped
    and depthwise convs stay ungated; a depthwise unit that reads a gated unit's output is masked
    with that gate's decisions (FollowGate), so its channels live where its inputs do.
    Functional dropout (``F.dropout(x, p, training=self.training)``) becomes a dropout module
    (``dropout``, ``dropout_1``, ...), so the decoupled model's train()/eval() switches it.
    Raises DecoupleError naming the module when the model cannot be traced, or the unknown paths
    when ``skip`` or ``only`` name a conv the model does not have.
    """
    gm = trace(model)
    _modularise_dropout(gm)
    modules = dict(gm.named_modules())
    units = _units(gm)
    if not units:
        raise DecoupleError(f"{type(model).__name__}: no nn.Conv2d found, nothing to decouple")
    paths = [conv.target for conv, _, _ in units]
    skip = set(skip)
    only = None if only is None else set(only)
    for arg, names in (("skip", skip), ("only", only or set())):
        unknown = sorted(names - set(paths))
        if unknown:
            raise DecoupleError(f"decouple({arg}=...): {unknown[:5]} name no conv of {type(model).__name__}; "
                                f"its convs are {paths[:8]}{' ...' if len(paths) > 8 else ''}")
    first = units[0][0]
    # the FCs of squeeze-and-excitation blocks (1x1 convs on a pooled vector) are not units to gate
    se_fcs = {se[k] for n in gm.graph.nodes if (se := match_se(n, modules)) for k in ("fc1_node", "fc2_node")}
    for conv, bn, end in units:
        path = conv.target
        if (conv is first or conv in se_fcs or path in skip or (only is not None and path not in only)
                or _is_last_layer(conv, modules)):
            continue
        m = modules[path]
        if m.groups != 1:
            continue  # grouped and depthwise convs stay ungated (a depthwise one follows its input below)
        gate = ArchitectureControl(m.in_channels, m.out_channels, reduction)
        gate.to(device=m.weight.device, dtype=m.weight.dtype)
        gname = gate_name(path)
        if gname in modules:
            raise DecoupleError(f"conv '{path}': model already has a module named '{gname}' (already decoupled?)")
        gm.add_submodule(gname, gate)
        x = conv.args[0]
        with gm.graph.inserting_after(end):
            gated = gm.graph.call_module(gname, (x, end))
        end.replace_all_uses_with(gated)
        gated.args = (x, end)  # replace_all_uses_with rewrote our own argument too
    _follow_depthwise(gm, units)
    gm.graph.lint()
    gm.recompile()
    gm.dyninfer_decoupled = True
    return gm


def _follow_depthwise(gm: fx.GraphModule, units: list[tuple[fx.Node, fx.Node, fx.Node]]) -> None:
    """A depthwise unit (groups = in = out channels) reading a gate's output gets a FollowGate after
    its end (BN, or the activation after it), so its output channels live where its inputs do."""
    modules = dict(gm.named_modules())
    for conv, bn, end in units:
        m = modules[conv.target]
        src = conv.args[0]
        if bn is None or not (m.groups == m.in_channels == m.out_channels) or m.groups == 1:
            continue
        if not (isinstance(src, fx.Node) and src.op == "call_module"
                and isinstance(modules[src.target], ArchitectureControl)):
            continue
        name = conv.target + "_follow"
        if name in modules:
            raise DecoupleError(f"conv '{conv.target}': model already has a module named '{name}'")
        gm.add_submodule(name, FollowGate(src.target, modules[src.target]))
        with gm.graph.inserting_after(end):
            masked = gm.graph.call_module(name, (end,))
        end.replace_all_uses_with(masked)
        masked.args = (end,)


def gates(model: nn.Module) -> dict[str, ArchitectureControl]:
    """Gated units of ``model`` in execution (definition) order: {gate path: module}."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ArchitectureControl)}


def calculation_path(model: nn.Module) -> torch.Tensor:
    """(B, sum N_l) concatenated z of every gate from the last forward pass."""
    zs = []
    for name, g in gates(model).items():
        if g.z is None:
            raise RuntimeError(f"gate '{name}' has not run yet: call the model first")
        zs.append(g.z.detach())
    if not zs:
        raise RuntimeError("model has no gates")
    return torch.cat(zs, dim=1)


_ = operator  # re-exported for users building graphs by hand
