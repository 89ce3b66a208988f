"""The C++ plan validator on hand-made defects of a compiled ResNet-20 plan: each must be refused
with an error naming the op and field, before anything runs. Defects that used to crash the
process run in a subprocess."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from dyninfer._ext import load_extension
from dyninfer.compiler.planner import AVGPOOL, CONV, GATE, build_plan, op_kind, plan_schema
from dyninfer.models import create_model

load_extension()


@pytest.fixture(scope="module")
def spec():
    torch.manual_seed(0)
    return build_plan(create_model("resnet20", gated=True).eval(), (3, 32, 32))


def split_ops(ops: list[int]) -> list[list[int]]:
    out, q = [], 0
    while q < len(ops):
        out.append(ops[q:q + 2 + ops[q + 1]])
        q += 2 + ops[q + 1]
    return out


def join_ops(segs: list[list[int]]) -> list[int]:
    return [v for s in segs for v in s]


def build(spec, ops=None, meta=None, weights=None):
    plan = torch.classes.dyninfer.Plan(meta or spec.meta, ops or spec.ops, weights or spec.weights, spec.conv_names)
    plan.run(torch.randn(1, 3, 32, 32), True, False)
    return plan


def first(segs, kind):
    return next(i for i, s in enumerate(segs) if s[0] == op_kind(kind))


def at(kind: str, name: str) -> int:
    """Position of field ``name`` in an encoded op segment of ``kind`` (after kind and count)."""
    return 2 + plan_schema()["ops"][kind]["fields"].index(name)


def test_schema_names_every_field_the_planner_encodes(spec):
    schema = plan_schema()
    assert schema["buffer"] == ["C", "H", "W", "border", "slot", "nonneg"]
    for seg in split_ops(spec.ops):
        kind = next(k for k, d in schema["ops"].items() if d["kind"] == seg[0])
        d = schema["ops"][kind]
        assert seg[1] == len(d["fields"]) or d["variadic"], (kind, seg[1])
    # layout version 3: conv's relu became act; groups, follow and act_bounds follow the gate;
    # version 4: the gate's boost
    assert schema["version"] == 4
    assert schema["ops"]["conv"]["fields"][-5:] == ["act", "gate", "groups", "follow", "act_bounds"]
    assert len(schema["ops"]["conv"]["fields"]) == 20
    assert schema["ops"]["gate"]["fields"][-2:] == ["force_k", "boost"]


def test_the_unmodified_plan_runs(spec):
    build(spec)


def test_negative_weight_index_is_refused(spec):
    segs = split_ops(spec.ops)
    c = first(segs, CONV)
    segs[c][at(CONV, "bias")] = -1  # conv bias: a null pointer the first run dereferenced
    with pytest.raises(ValueError, match="conv bias refers to weight -1"):
        build(spec, join_ops(segs))
    segs = split_ops(spec.ops)
    g = first(segs, GATE)
    segs[g][at(GATE, "fc1_weight")] = -1
    with pytest.raises(ValueError, match="gate fc1 weight refers to weight -1"):
        build(spec, join_ops(segs))


def test_gate_after_its_conv_is_refused(spec):
    segs = split_ops(spec.ops)
    g = first(segs, GATE)
    assert segs[g + 1][0] == op_kind(CONV)
    segs[g], segs[g + 1] = segs[g + 1], segs[g]
    with pytest.raises(ValueError, match="its gate 0 does not run before it"):
        build(spec, join_ops(segs))


def test_gate_running_twice_and_buffer_read_before_written_are_refused(spec):
    segs = split_ops(spec.ops)
    g = first(segs, GATE)
    with pytest.raises(ValueError, match="gate 0 runs twice"):
        build(spec, join_ops(segs[:g + 1] + [segs[g]] + segs[g + 1:]))
    last_conv = max(i for i, s in enumerate(segs) if s[0] == op_kind(CONV))
    with pytest.raises(ValueError, match="is read before any op produces it"):
        build(spec, join_ops([segs[last_conv]] + segs))


def test_pool_geometry_is_checked(spec):
    segs = split_ops(spec.ops)
    p = first(segs, AVGPOOL)
    segs[p][at(AVGPOOL, "sh")] = 1
    segs[p][at(AVGPOOL, "sw")] = 1
    segs[p][at(AVGPOOL, "kh")] = 4  # 4x8 kernel, stride 1: 5x1, not the 1x1 output buffer
    with pytest.raises(ValueError, match="does not follow from input 8x8"):
        build(spec, join_ops(segs))
    segs = split_ops(spec.ops)
    segs[p][at(AVGPOOL, "ph")] = 5  # padding above half the kernel: windows of padding only (divisor 0)
    with pytest.raises(ValueError, match="field 'ph' = 5 outside"):
        build(spec, join_ops(segs))


def test_conv_edge_values_are_refused(spec):
    c = first(split_ops(spec.ops), CONV)
    segs = split_ops(spec.ops)
    segs[c][at(CONV, "kh")] = 2 ** 62  # kh: used to be narrowed to int silently
    with pytest.raises(ValueError, match="field 'kh' = 4611686018427387904 outside"):
        build(spec, join_ops(segs))
    meta = list(spec.meta)
    meta[1 + plan_schema()["buffer"].index("slot")] = 2 ** 31 - 1  # buffer 0's slot: an allocation of 2^31 slot vectors
    with pytest.raises(ValueError, match="buffer 0: field 'slot' = 2147483647"):
        build(spec, meta=meta)


@pytest.mark.parametrize("field,value,match", [
    ("groups", 3, "groups 3 do not divide 16 -> 16 channels"),
    ("groups", 0, "field 'groups' = 0 outside"),
    ("follow", 1, "follow needs a depthwise conv"),
    ("act", 5, "field 'act' = 5 outside"),
    ("act_bounds", 0, "act_bounds must be -1 unless act is 2"),
])
def test_conv_groups_follow_and_activation_are_checked(spec, field, value, match):
    segs = split_ops(spec.ops)
    c = [i for i, s in enumerate(segs) if s[0] == op_kind(CONV)][1]  # layer1.0.conv1: 16 -> 16, gated
    segs[c][at(CONV, field)] = value
    with pytest.raises(ValueError, match=match):
        build(spec, join_ops(segs))


@pytest.mark.parametrize("value", [-1, 2])
def test_gate_boost_is_checked(spec, value):
    segs = split_ops(spec.ops)
    g = first(segs, GATE)
    segs[g][at(GATE, "boost")] = value
    with pytest.raises(ValueError, match=f"field 'boost' = {value} outside"):
        build(spec, join_ops(segs))


@pytest.mark.parametrize("bounds,match", [((2.0, 1.0), "clamp bounds .* are empty or not numbers"),
                                          ((float("nan"), 1.0), "clamp bounds .* are empty or not numbers"),
                                          (None, "conv act_bounds")])
def test_clamp_bounds_are_checked(spec, bounds, match):
    segs = split_ops(spec.ops)
    c = [i for i, s in enumerate(segs) if s[0] == op_kind(CONV) and s[at(CONV, "residual")] < 0][1]
    weights = list(spec.weights)
    segs[c][at(CONV, "act")] = 2
    if bounds is None:
        segs[c][at(CONV, "act_bounds")] = len(weights) + 5  # no such weight
    else:
        weights.append(torch.tensor(bounds))
        segs[c][at(CONV, "act_bounds")] = len(weights) - 1
    with pytest.raises(ValueError, match=match):
        build(spec, join_ops(segs), weights=weights)


# Run in a subprocess: on a build without the hidden-size bound this overflowed the workspace.
_HIDDEN = textwrap.dedent("""
    import torch
    from dyninfer._ext import load_extension
    from dyninfer.compiler.planner import build_plan, op_kind, plan_schema
    from dyninfer.models import create_model
    load_extension()
    torch.manual_seed(0)
    spec = build_plan(create_model("resnet20", gated=True).eval(), (3, 32, 32))
    ops, q, weights = list(spec.ops), 0, list(spec.weights)
    while ops[q] != op_kind("gate"):
        q += 2 + ops[q + 1]
    f = {n: q + 2 + i for i, n in enumerate(plan_schema()["ops"]["gate"]["fields"])}
    C, N, hidden = ops[f["in_channels"]], ops[f["out_channels"]], 50000
    ops[f["hidden"]] = hidden
    for name, n in (("fc1_weight", hidden * C), ("fc1_bias", hidden), ("fc2_weight", N * hidden)):
        weights.append(torch.randn(n) * 0.01)
        ops[f[name]] = len(weights) - 1
    plan = torch.classes.dyninfer.Plan(spec.meta, ops, weights, spec.conv_names)
    logits, path = plan.run(torch.randn(2, 3, 32, 32), True, False)
    assert torch.isfinite(logits).all()
    print("ok", tuple(logits.shape))
""")


def test_gate_hidden_size_larger_than_the_channels_runs_safely():
    r = subprocess.run([sys.executable, "-c", _HIDDEN], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"rc {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.startswith("ok (2, 10)")
