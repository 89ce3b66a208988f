"""Graph -> plan: trace a (gated) model with torch.fx, fold BN, fuse epilogues, assign memory.

The plan is what the C++ runtime executes (csrc/kernels/plan_build.cpp validates and lays it out,
plan_exec.cpp runs it): buffers (C, H, W, border, slot, non-negative) and ops. The builder's passes work on typed ops (:class:`PlanOp`: a kind name and
its fields by name); :func:`encode_ops` and :func:`encode_meta` lay them out once at the end through
the wire schema the extension declares (csrc/kernels/plan_schema.h, ``dyninfer._C.plan_schema()``),
so the layout is written in one place only.

Fusion: a conv absorbs the chain ``conv -> [BatchNorm2d] -> [ReLU, clamp (ReLU6, Hardtanh), Hardswish or SiLU] ->
[gate | FollowGate] -> [+ residual] -> [ReLU]`` when every link has a single user (an activation
before the residual add stops the chain there, because the kernel applies its activation after the
add). Every node is read through the one op table (dyninfer.nn.graph.classify) that decouple and
count_macs read too. Its gate becomes a GATE op emitted just before it,
reading the gate's own input buffer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UnsupportedLayerError
from ..nn.decouple import DyninferTracer, is_relu
from ..nn.gates import ArchitectureControl, FollowGate
from ..nn.graph import UNIT_ACTIVATIONS, NodeOp, classify, match_se

# op kind names of the wire schema (csrc/kernels/plan_schema.h)
CONV, GATE, MAXPOOL, AVGPOOL, LINEAR, CONCAT, ADD, AFFINE, SHORTCUT, SE = (
    "conv", "gate", "maxpool", "avgpool", "linear", "concat", "add", "affine", "shortcut", "se")
# activation codes of the conv and linear epilogues (plan_schema.h)
_ACT_CODE = {"relu": 1, "clamp": 2, "hardswish": 3, "silu": 4}
assert tuple(_ACT_CODE) == UNIT_ACTIVATIONS, "every unit activation decouple accepts needs an engine code"



_SCHEMA: dict | None = None


def plan_schema() -> dict:
    """The plan's wire layout as the extension declares it: {"buffer": [field names], "plan": [...],
    "ops": {kind name: {"kind": id, "fields": [names], "variadic": tail name or ""}}}."""
    global _SCHEMA
    if _SCHEMA is None:
        from .._ext import load_extension

        load_extension()
        from .._C import plan_schema as _schema

        _SCHEMA = _schema()
    return _SCHEMA


def op_kind(name: str) -> int:
    """Wire id of the op kind ``name`` ("conv", "gate", ...)."""
    return plan_schema()["ops"][name]["kind"]


@dataclass
class PlanOp:
    """One op of the plan under construction: ``fields`` by schema name, ``tail`` the values of a
    variadic field (concat's inputs), ``inputs`` / ``output`` the buffers it reads and writes."""
    kind: str
    fields: dict[str, int]
    inputs: list[int]
    output: int | None
    tail: list[int] = field(default_factory=list)


def encode_ops(ops: list[PlanOp]) -> list[int]:
    """``[kind, n_fields, fields...]`` per op, fields in schema order; a field the schema does not
    declare, or one it declares that the op lacks, is an error naming both."""
    schema = plan_schema()["ops"]
    out: list[int] = []
    for i, op in enumerate(ops):
        if op.kind not in schema:
            raise ValueError(f"plan op {i}: unknown kind {op.kind!r}; the schema has {sorted(schema)}")
        d = schema[op.kind]
        names = list(d["fields"])
        if set(op.fields) != set(names):
            raise ValueError(f"plan op {i} ({op.kind}): fields {sorted(set(names) - set(op.fields))} missing, "
                             f"{sorted(set(op.fields) - set(names))} not in the schema")
        if op.tail and not d["variadic"]:
            raise ValueError(f"plan op {i} ({op.kind}): {len(op.tail)} extra values for a fixed-size op")
        vals = [int(op.fields[n]) for n in names] + [int(v) for v in op.tail]
        out += [d["kind"], len(vals)] + vals
    return out


def encode_meta(buffers: list["BufferInfo"], nonneg: list[int], plan_fields: dict[str, int],
                gate_sizes: list[int]) -> list[int]:
    """``[n_buffers, buffer fields * n_buffers, plan fields, gate sizes]`` in schema order."""
    schema = plan_schema()
    meta = [len(buffers)]
    for info, nn_flag in zip(buffers, nonneg):
        values = {"C": info.C, "H": info.H, "W": info.W, "border": info.border, "slot": info.slot,
                  "nonneg": nn_flag}
        meta += [int(values[n]) for n in schema["buffer"]]
    meta += [int(plan_fields[n]) for n in schema["plan"]]
    return meta + [int(n) for n in gate_sizes]


@dataclass
class BufferInfo:
    C: int
    H: int
    W: int
    border: int = 0
    slot: int = -1


@dataclass
class PlanSpec:
    """Everything torch.classes.dyninfer.Plan is built from, plus names for reports."""
    meta: list[int]
    ops: list[int]
    weights: list[torch.Tensor]
    conv_names: list[str]
    gate_names: list[str]
    gate_sizes: list[int]
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, ...]
    buffers: list[BufferInfo] = field(default_factory=list)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64)
    if bn is not None:
        scale, shift = _bn_affine(bn)
        w = w * scale[:, None, None, None]
        b = b * scale + shift
    return w.float().contiguous(), b.float().contiguous()


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedLayerError(f"BatchNorm2d without running statistics (track_running_stats=False) "
                                    f"cannot be folded: {bn}")
    inv = 1.0 / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(inv)
    scale = gamma * inv
    return scale, beta - bn.running_mean.detach().double() * scale


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Builder:
    def __init__(self, gm: fx.GraphModule, force_keep: float | None):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.force_keep = force_keep
        self.buffers: list[BufferInfo] = []
        self.ops: list[PlanOp] = []
        self.weights: list[torch.Tensor] = []
        self.env: dict[fx.Node, tuple[str, int]] = {}  # node -> ('act', buffer) | ('flat', buffer)
        self.conv_names: list[str] = []
        self.gate_names: list[str] = []
        self.gate_sizes: list[int] = []
        self.direct_pad: dict[int, int] = {}

    # -- helpers -------------------------------------------------------------------------------
    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"'{node.target}' ({type(self.modules[node.target]).__name__})"
        t = getattr(node.target, "__name__", str(node.target))
        return f"node '{node.name}' ({node.op} {t})"

    def unsupported(self, node: fx.Node, why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"dyninfer.compile: {self.where(node)}: {why}")

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.unsupported(node, "produces a non-tensor value the engine cannot represent")
        return tuple(meta.shape)

    def new_buffer(self, node: fx.Node) -> int:
        s = self.shape(node)
        if len(s) == 4:
            info = BufferInfo(s[1], s[2], s[3])
        elif len(s) == 2:
            info = BufferInfo(s[1], 1, 1)
        else:
            raise self.unsupported(node, f"output of rank {len(s)} (shape {s}) is not supported")
        self.buffers.append(info)
        return len(self.buffers) - 1

    def weight(self, t: torch.Tensor) -> int:
        w = t.detach().float().contiguous()
        if w.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            w = w.clone()  # the engine's own copy: training the model further never changes a compiled plan
        self.weights.append(w)  # the C++ plan shares these tensors (held once)
        return len(self.weights) - 1

    def act(self, node: fx.Node, user: fx.Node) -> int:
        if node not in self.env:
            raise self.unsupported(user, f"its input '{node.name}' was not produced by a supported layer")
        kind, b = self.env[node]
        if kind != "act":
            raise self.unsupported(user, "expects a 4-d activation but got a flattened one")
        return b

    def emit(self, kind: str, fields: dict[str, int], inputs: list[int], output: int | None,
             tail: list[int] | None = None) -> None:
        self.ops.append(PlanOp(kind, fields, inputs, output, tail or []))

    def only_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def is_module(self, node: fx.Node | None, cls) -> bool:
        return node is not None and node.op == "call_module" and isinstance(self.modules[node.target], cls)

    def op(self, node: fx.Node) -> NodeOp:
        return classify(node, self.modules)

    def is_add(self, node: fx.Node | None) -> bool:
        if node is None:
            return False
        op = self.op(node)
        return op.kind == "add" and all(isinstance(a, fx.Node) for a in op.params["operands"])

    def operands(self, node: fx.Node) -> tuple[fx.Node, fx.Node]:
        return self.op(node).params["operands"]

    # -- conv chains -----------------------------------------------------------------------------
    def conv_chain(self, conv: fx.Node, claimed: set) -> dict:
        ch = {"conv": conv, "bn": None, "gate": None, "res": None, "act": 0, "bounds": None, "follow": False,
              "nodes": [conv]}
        cur = conv

        def only_user(n: fx.Node) -> fx.Node | None:
            u = self.only_user(n)
            return None if u in claimed else u  # a node fuses into one chain only

        nxt = only_user(cur)
        if self.is_module(nxt, nn.BatchNorm2d):
            ch["bn"] = nxt
            cur = nxt
            ch["nodes"].append(cur)
            nxt = only_user(cur)
        act_before = False
        nop = self.op(nxt) if nxt is not None else None
        if nop is not None and nop.kind in _ACT_CODE and only_user(cur) is nxt:
            act_before = True
            ch["act"] = _ACT_CODE[nop.kind]
            if nop.kind == "clamp":
                ch["bounds"] = (nop.params["lo"], nop.params["hi"])
            cur = nxt
            ch["nodes"].append(cur)
            nxt = only_user(cur)
        if self.is_module(nxt, ArchitectureControl) and len(nxt.args) == 2 and nxt.args[1] is cur:
            ch["gate"] = nxt
            cur = nxt
            ch["nodes"].append(cur)
            nxt = only_user(cur)
        if self.is_module(nxt, FollowGate) and ch["gate"] is None:
            # the depthwise conv must read its gate's output directly: then its live input channels
            # are exactly that gate's decisions, which the follower multiplies by
            src = conv.args[0]
            m = self.modules[conv.target]
            if (isinstance(src, fx.Node) and src.op == "call_module" and src.target == self.modules[nxt.target].gate_path
                    and m.groups == m.in_channels == m.out_channels):
                ch["follow"] = True
                cur = nxt
                ch["nodes"].append(cur)
                nxt = only_user(cur)
        if not act_before and self.is_add(nxt):
            a, b = self.operands(nxt)
            other = b if a is cur else a
            if other is not cur:
                ch["res"] = other
                cur = nxt
                ch["nodes"].append(cur)
                nxt = only_user(cur)
                if nxt is not None and is_relu(nxt, self.modules):
                    ch["act"] = 1
                    cur = nxt
                    ch["nodes"].append(cur)
        ch["end"] = cur
        return ch

    def emit_conv(self, ch: dict) -> None:
        node = ch["conv"]
        conv = self.modules[node.target]
        if conv.padding_mode != "zeros":
            raise self.unsupported(node, f"padding_mode='{conv.padding_mode}' is not supported (only zeros)")
        if isinstance(conv.padding, str):
            raise self.unsupported(node, f"padding='{conv.padding}' is not supported; give explicit padding")
        x = self.act(node.args[0], node)
        bn = self.modules[ch["bn"].target] if ch["bn"] is not None else None
        w, b = _fold_bn(conv, bn)
        gate_idx = -1
        if ch["gate"] is not None:
            gnode = ch["gate"]
            gmod: ArchitectureControl = self.modules[gnode.target]
            gin = self.act(gnode.args[0], gnode)
            gate_idx = self.gate_index[gnode.target]
            keep = self.force_keep if self.force_keep is not None else gmod.force_keep
            k = -1 if keep is None else int(round(keep * gmod.out_channels))
            # FC weights go transposed: the runtime does one vector axpy per (live) input.
            self.emit(GATE, dict(input=gin, gate=gate_idx, fc1_weight=self.weight(gmod.fc1.weight.t()),
                                 fc1_bias=self.weight(gmod.fc1.bias), fc2_weight=self.weight(gmod.fc2.weight.t()),
                                 fc2_bias=self.weight(gmod.fc2.bias), in_channels=gmod.in_channels,
                                 hidden=gmod.fc1.out_features, out_channels=gmod.out_channels, force_k=k,
                                 boost=int(gmod.boost)),
                      [gin], None)
        res = self.act(ch["res"], ch["nodes"][-1]) if ch["res"] is not None else -1
        out = self.new_buffer(ch["end"])
        kh, kw = conv.kernel_size
        sh, sw = conv.stride
        ph, pw = conv.padding
        dh, dw = conv.dilation
        if max(ph, pw) <= 3:
            # A zero border of the conv's padding lets stride-1 convs read the planes in place and
            # strided ones build their columns without bounds checks.
            self.direct_pad[x] = max(self.direct_pad.get(x, 0), ph, pw)
        bounds = self.weight(torch.tensor(ch["bounds"], dtype=torch.float32)) if ch["act"] == 2 else -1
        self.emit(CONV, dict(input=x, output=out, residual=res, weight=self.weight(w), bias=self.weight(b),
                             out_channels=conv.out_channels, in_channels=conv.in_channels, kh=kh, kw=kw, sh=sh,
                             sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, act=ch["act"], gate=gate_idx, groups=conv.groups,
                             follow=int(ch["follow"]), act_bounds=bounds),
                  [x] + ([res] if res >= 0 else []), out)
        self.conv_names.append(node.target)
        self.env[ch["end"]] = ("act", out)

    # -- other layers ------------------------------------------------------------------------------
    def emit_pool(self, node: fx.Node, op: NodeOp) -> None:
        p = op.params
        x = self.act(op.x, node)
        out = self.new_buffer(node)
        bi, bo = self.buffers[x], self.buffers[out]
        if op.kind == "max_pool":
            if _pair(p["dilation"]) != (1, 1):
                raise self.unsupported(node, "dilated max pooling is not supported")
            if p["return_indices"]:
                raise self.unsupported(node, "return_indices=True is not supported")
            kh, kw = _pair(p["kernel_size"])
            sh, sw = _pair(p["stride"] if p["stride"] not in (None, (), []) else p["kernel_size"])
            ph, pw = _pair(p["padding"])
            # A zero border covering the padding (and a ceil_mode overhang) lets the runtime pool
            # values >= 0 with vector loads in place: a padded 0 never exceeds the window's max.
            over = max(ph, pw, (bo.H - 1) * sh - ph + kh - bi.H, (bo.W - 1) * sw - pw + kw - bi.W)
            if over <= 3:
                self.direct_pad[x] = max(self.direct_pad.get(x, 0), over)
            self.emit(MAXPOOL, dict(input=x, output=out, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw), [x], out)
        elif op.kind == "avg_pool":
            kh, kw = _pair(p["kernel_size"])
            sh, sw = _pair(p["stride"] if p["stride"] not in (None, (), []) else p["kernel_size"])
            ph, pw = _pair(p["padding"])
            self.emit(AVGPOOL, dict(input=x, output=out, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw,
                                    count_include_pad=int(p["count_include_pad"]),
                                    divisor=int(p["divisor_override"] or 0)), [x], out)
        else:  # adaptive pooling with an output that tiles the input exactly, or a spatial mean
            if bi.H % bo.H or bi.W % bo.W:
                raise self.unsupported(node, f"adaptive pooling {bi.H}x{bi.W} -> {bo.H}x{bo.W} does not tile evenly")
            kh, kw = bi.H // bo.H, bi.W // bo.W
            self.emit(AVGPOOL, dict(input=x, output=out, kh=kh, kw=kw, sh=kh, sw=kw, ph=0, pw=0, count_include_pad=0,
                                    divisor=0), [x], out)
        # a mean without keepdim leaves (B, C): the same memory as (B, C, 1, 1), read as features
        flat = op.kind == "mean" and not p["keepdim"]
        self.env[node] = ("flat" if flat else "act", out)

    def emit_linear(self, node: fx.Node, m: nn.Linear) -> None:
        src = node.args[0]
        if src not in self.env:
            raise self.unsupported(node, f"its input '{src.name}' was not produced by a supported layer")
        _, x = self.env[src]
        bi = self.buffers[x]
        if bi.C * bi.H * bi.W != m.in_features:
            raise self.unsupported(node, f"expects {m.in_features} features, input has {bi.C}x{bi.H}x{bi.W}")
        act_node = self.only_user(node)
        act = self.op(act_node).kind if act_node is not None else None
        act = act if act in ("relu", "hardswish") else None  # the Linear epilogue has no SiLU
        end = act_node if act else node
        out = self.new_buffer(end)
        b = m.bias if m.bias is not None else torch.zeros(m.out_features)
        # weight transposed (in x out): the engine runs all outputs at once, one input feature at a time
        self.emit(LINEAR, dict(input=x, output=out, weight=self.weight(m.weight.t()), bias=self.weight(b),
                               act=_ACT_CODE[act] if act else 0), [x], out)
        self.env[end] = ("act", out)
        if act:
            self.fused.add(act_node)

    def emit_affine(self, node: fx.Node, scale: torch.Tensor, shift: torch.Tensor, relu: bool) -> None:
        x = self.act(node.args[0], node)
        out = self.new_buffer(node)
        self.emit(AFFINE, dict(input=x, output=out, scale=self.weight(scale), shift=self.weight(shift), relu=int(relu)),
                  [x], out)
        self.env[node] = ("act", out)

    # -- driver --------------------------------------------------------------------------------------
    def match_se(self, node: fx.Node) -> dict | None:
        return match_se(node, self.modules)

    def emit_se(self, node: fx.Node, se: dict) -> None:
        x = self.act(se["x"], node)
        out = self.new_buffer(node)
        m1, m2 = se["fc1"], se["fc2"]
        hidden, c = m1.out_channels, m2.out_channels
        b1 = m1.bias if m1.bias is not None else torch.zeros(hidden)
        b2 = m2.bias if m2.bias is not None else torch.zeros(c)
        self.emit(SE, dict(input=x, output=out, fc1_weight=self.weight(m1.weight.reshape(hidden, -1).t()),
                           fc1_bias=self.weight(b1), fc2_weight=self.weight(m2.weight.reshape(c, hidden).t()),
                           fc2_bias=self.weight(b2), channels=c, hidden=hidden, act1=se["act1"],
                           gate_act=se["gate_act"]), [x], out)
        self.env[node] = ("act", out)

    def build(self) -> None:
        self.fused: set[fx.Node] = set()
        anchors: dict[fx.Node, dict] = {}
        ses: dict[fx.Node, dict] = {}
        for node in self.gm.graph.nodes:
            se = self.match_se(node)
            if se is not None:
                ses[node] = se
                self.fused.update(se["nodes"])
        for node in self.gm.graph.nodes:
            if node in self.fused:
                continue
            if self.is_module(node, nn.Conv2d):
                ch = self.conv_chain(node, self.fused)
                anchors[ch["end"]] = ch
                self.fused.update(ch["nodes"])
        # Gate indices (and the path layout) follow module order, as dyninfer.nn.gates(model) does.
        used = {ch["gate"].target for ch in anchors.values() if ch["gate"] is not None}
        self.gate_names = [n for n in self.gate_order if n in used]
        self.gate_sizes = [self.modules[n].out_channels for n in self.gate_names]
        self.gate_index = {n: i for i, n in enumerate(self.gate_names)}
        placeholders = 0
        for node in self.gm.graph.nodes:
            if node in anchors:
                self.emit_conv(anchors[node])
                continue
            if node in ses:
                self.emit_se(node, ses[node])
                continue
            if node in self.fused:
                continue
            op = node.op
            if op == "placeholder":
                placeholders += 1
                if placeholders > 1:
                    raise self.unsupported(node, "the engine runs models with a single tensor input")
                s = self.shape(node)
                if len(s) != 4:
                    raise self.unsupported(node, f"input must be (B, C, H, W), got {s}")
                self.env[node] = ("act", self.new_buffer(node))
            elif op == "get_attr":
                raise self.unsupported(node, "reads a parameter or buffer directly in forward")
            elif op == "output":
                res = node.args[0]
                if not isinstance(res, fx.Node) or res not in self.env:
                    raise self.unsupported(node, "the model must return a single tensor")
                self.output = self.env[res][1]
                self.output_shape = self.shape(res)[1:]
            elif op in ("call_module", "call_function", "call_method"):
                self.dispatch(node, self.op(node))
            else:
                raise self.unsupported(node, "unknown fx node kind")

    def alias(self, node: fx.Node, src: fx.Node, kind: str | None = None) -> None:
        """``node`` is ``src``'s value under another name (kind 'flat' once flattened)."""
        if src not in self.env:
            raise self.unsupported(node, f"its input '{getattr(src, 'name', src)}' was not produced by a supported layer")
        k, b = self.env[src]
        self.env[node] = (kind or k, b)

    def flatten_to_features(self, node: fx.Node, src: fx.Node, what: str) -> None:
        """flatten / view / reshape: only (B, C, H, W) -> (B, C·H·W) (or a no-op on (B, F))."""
        s = self.shape(node)
        if src not in self.env:
            raise self.unsupported(node, f"its input '{getattr(src, 'name', src)}' was not produced by a supported layer")
        bi = self.buffers[self.env[src][1]]
        if len(s) != 2 or s[1] != bi.C * bi.H * bi.W:
            raise self.unsupported(node, f"{what}: only flattening to (B, C*H*W) = (B, {bi.C * bi.H * bi.W}) is "
                                         f"supported, got shape {tuple(s)}")
        self.env[node] = ("flat", self.env[src][1])

    def dispatch(self, node: fx.Node, op: NodeOp) -> None:
        k, p, m = op.kind, op.params, op.module
        if k in ("max_pool", "avg_pool", "adaptive_avg_pool"):
            self.emit_pool(node, op)
        elif k == "mean":
            if p["dims"] != (2, 3) or len(self.shape(op.x)) != 4:
                raise self.unsupported(node, f"mean over dims {p['dims']}: only the spatial mean x.mean((2, 3)) "
                                             "(a global average pool) is supported")
            self.emit_pool(node, op)
        elif k == "linear":
            if m is None:
                raise self.unsupported(node, "functional F.linear with a weight read in forward; use nn.Linear")
            self.emit_linear(node, m)
        elif k == "batch_norm":
            if not isinstance(m, nn.BatchNorm2d):
                raise self.unsupported(node, "only nn.BatchNorm2d modules (in eval mode) are supported as batch norm")
            scale, shift = _bn_affine(m)
            self.emit_affine(node, scale, shift, False)
        elif k == "relu":
            c = self.buffers[self.act(op.x, node)].C
            self.emit_affine(node, torch.ones(c), torch.zeros(c), True)
        elif k == "shortcut":
            x = self.act(op.x, node)
            out = self.new_buffer(node)
            self.emit(SHORTCUT, dict(input=x, output=out, stride=m.stride, pad_channels=m.pad_channels), [x], out)
            self.env[node] = ("act", out)
        elif k == "identity":
            if p.get("training"):
                raise self.unsupported(node, "dropout with training=True drops activations at inference too; "
                                             "write F.dropout(x, p, training=self.training) or use nn.Dropout")
            self.alias(node, op.x)
        elif k == "flatten":
            self.flatten_to_features(node, op.x, f"flatten(start_dim={p['start_dim']}, end_dim={p['end_dim']})")
        elif k == "reshape":
            self.flatten_to_features(node, op.x, op.label)
        elif k == "shape":
            pass  # shape queries feed view/reshape; they produce no tensor
        elif k == "add":
            if not all(isinstance(a, fx.Node) for a in p["operands"]):
                raise self.unsupported(node, "only tensor + tensor additions are supported")
            a, b = (self.act(x, node) for x in p["operands"])
            relu_node = self.only_user(node)
            relu = relu_node is not None and is_relu(relu_node, self.modules)
            end = relu_node if relu else node
            out = self.new_buffer(end)
            self.emit(ADD, dict(a=a, b=b, output=out, relu=int(relu)), [a, b], out)
            self.env[end] = ("act", out)
            if relu:
                self.fused.add(relu_node)
        elif k == "cat":
            dim = p["dim"]
            if dim not in (1, -3):
                raise self.unsupported(node, f"concatenation along dim {dim}; only channels (dim=1) are supported")
            ins = [self.act(x, node) for x in p["tensors"]]
            out = self.new_buffer(node)
            self.emit(CONCAT, dict(output=out), ins, out, tail=ins)
            self.env[node] = ("act", out)
        elif k == "gate":
            raise self.unsupported(node, "a gate must follow its conv->BN(->ReLU) unit directly "
                                         "(as dyninfer.decouple places it)")
        elif k == "follow":
            raise self.unsupported(node, "a FollowGate must follow a depthwise conv->BN(->activation) unit that "
                                         "reads its gate's output directly (as dyninfer.decouple places it)")
        elif k in UNIT_ACTIVATIONS:  # (a standalone ReLU was handled above)
            raise self.unsupported(node, f"{op.label} runs only fused after a conv(->BN) unit (or hardswish after "
                                         "a Linear); standalone it is not supported yet")
        elif k in ("hardsigmoid", "sigmoid"):
            raise self.unsupported(node, f"{op.label} is supported only as the gate of a squeeze-and-excitation "
                                         "block x * gate(fc2(relu(fc1(GAP(x))))) with 1x1-conv FCs")
        elif k == "conv":
            raise self.unsupported(node, "functional F.conv2d with a weight read in forward; use nn.Conv2d")
        else:
            why = p.get("why", "")
            raise self.unsupported(node, "this operation is not supported by the engine" + (f" ({why})" if why else ""))

    # -- memory ------------------------------------------------------------------------------------
    def assign_memory(self) -> None:
        """Borders, in-place residual convs and memory slots.

        A conv with a residual whose buffer dies at that conv writes its output into the
        residual's own memory (the epilogue reads each residual vector just before storing the
        sum there): no separate output buffer, and channels that only the residual carries need
        no copy. Such chains share one slot and one border (the largest any member needs).
        Slots are then reused by liveness among buffers of identical (H, W, border).
        """
        last_use: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            for b in op.inputs:
                last_use[b] = i
        producer = {op.output: op.kind for op in self.ops if op.output is not None}
        self.inplace_out: set[int] = set()
        for i, op in enumerate(self.ops):
            if op.kind != CONV or op.fields["residual"] < 0:
                continue
            res, out = op.fields["residual"], op.output
            r, o = self.buffers[res], self.buffers[out]
            # Only residuals a conv produced: a ShortcutA residual carries just the middle channels,
            # so working in its memory would first move most planes (measured: the stage's first
            # residual conv at 57% of peak in place vs 68% for the others).
            if (last_use.get(res) == i and res not in (self.input, self.output) and op.fields["input"] != res
                    and producer.get(res) == CONV and (r.C, r.H, r.W) == (o.C, o.H, o.W)):
                self.inplace_out.add(out)
        # Border groups: a conv's residual and output, and its input and output when a stride-1
        # conv keeps the plane size, get one border, so AVX-512 "flat" vectors (one row pitch for
        # all three) stay possible; this also covers in-place chains, which share memory.
        group = list(range(len(self.buffers)))

        def find(b: int) -> int:
            while group[b] != b:
                group[b] = group[group[b]]
                b = group[b]
            return b

        for op in self.ops:
            if op.kind != CONV:
                continue
            x, res, out = op.fields["input"], op.fields["residual"], op.output
            if res >= 0:
                group[find(res)] = find(out)
            same_size = (self.buffers[x].H, self.buffers[x].W) == (self.buffers[out].H, self.buffers[out].W)
            if op.fields["sh"] == 1 and op.fields["sw"] == 1 and same_size:
                group[find(x)] = find(out)
        border: dict[int, int] = {}
        for b, pad in self.direct_pad.items():
            border[find(b)] = max(border.get(find(b), 0), pad)
        for b, info in enumerate(self.buffers):
            info.border = border.get(find(b), 0)

        n_slots = 0
        free: dict[tuple[int, int, int], list[int]] = {}

        def alloc(b: int) -> None:
            nonlocal n_slots
            info = self.buffers[b]
            key = (info.H, info.W, info.border)
            if free.get(key):
                info.slot = free[key].pop()
            else:
                info.slot = n_slots
                n_slots += 1

        alloc(self.input)
        for i, op in enumerate(self.ops):
            out = op.output
            res = op.fields.get("residual", -1) if op.kind == CONV else -1
            if out is not None and self.buffers[out].slot < 0:
                if out in self.inplace_out:
                    self.buffers[out].slot = self.buffers[res].slot
                else:
                    alloc(out)
            for b in set(op.inputs):
                if last_use.get(b) == i and b != self.output and not (out in self.inplace_out and b == res):
                    info = self.buffers[b]
                    free.setdefault((info.H, info.W, info.border), []).append(info.slot)

    def nonneg(self) -> list[int]:
        """1 for buffers whose values are known >= 0 (ReLU outputs and what pools, shortcuts and
        concatenation make of them): an in-place residual conv then leaves channels only the
        residual carries untouched instead of applying ReLU to them."""
        flag = [0] * len(self.buffers)
        for op in self.ops:
            out = op.output
            if out is None:
                continue
            if op.kind == CONV:
                act = op.fields["act"]
                flag[out] = int(act == 1 or act == 2 and self.weights[op.fields["act_bounds"]][0].item() >= 0)
            elif op.kind == LINEAR:
                flag[out] = int(op.fields["act"] == 1)
            elif op.kind in (AFFINE, ADD):
                flag[out] = int(bool(op.fields["relu"]))
            elif op.kind == SE:
                flag[out] = flag[op.inputs[0]]  # scales lie in [0, 1]
            elif op.kind in (MAXPOOL, AVGPOOL, SHORTCUT):
                flag[out] = flag[op.inputs[0]]
            elif op.kind == CONCAT:
                flag[out] = int(all(flag[b] for b in op.inputs))
        return flag


def trace_for_engine(model: nn.Module, input_shape: tuple[int, int, int]) -> fx.GraphModule:
    tracer = DyninferTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise UnsupportedLayerError(f"dyninfer.compile: cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    # Shape propagation runs the model's own gate modules: keep what they expose from the user's
    # last forward (z, logits, y_mean) untouched.
    saved = [(g, g.z, g.logits, g.y_mean) for g in model.modules() if isinstance(g, ArchitectureControl)]
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape))
    finally:
        for g, z, logits, y_mean in saved:
            g.z, g.logits, g.y_mean = z, logits, y_mean
    return gm


def build_plan(model: nn.Module, input_shape: tuple[int, int, int], force_keep: float | None = None) -> PlanSpec:
    """Trace ``model`` (eval mode) and build the engine plan for inputs of shape (B, *input_shape)."""
    if force_keep is not None and not 0.0 <= force_keep <= 1.0:
        raise ValueError(f"force_keep must lie in [0, 1], got {force_keep}")
    gm = trace_for_engine(model, input_shape)
    bld = _Builder(gm, force_keep)
    bld.gate_order = [n for n, m in model.named_modules() if isinstance(m, ArchitectureControl)]
    bld.output = None
    bld.build()
    if bld.output is None:
        raise UnsupportedLayerError("dyninfer.compile: model has no output")
    bld.input = next(b for n, (k, b) in bld.env.items() if n.op == "placeholder")
    bld.assign_memory()
    meta = encode_meta(bld.buffers, bld.nonneg(),
                       {"input": bld.input, "output": bld.output, "gate_count": len(bld.gate_sizes)}, bld.gate_sizes)
    ops = encode_ops(bld.ops)
    return PlanSpec(meta, ops, bld.weights, bld.conv_names, bld.gate_names, bld.gate_sizes,
                    tuple(input_shape), tuple(bld.output_shape), bld.buffers)
