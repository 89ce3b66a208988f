"""Seed corpora: OUT_DIR for fuzz/plan_fuzzer.cpp and OUT_DIR/artefacts for fuzz/artefact_fuzzer.cpp
(the same models saved as runtime artefacts, format 2). The plans are of the registered models (gated and
dense, untrained weights) in the fuzzer's input format, at 8×8 pixels (small plans run fast
under the sanitizers), a tiny branchy net for max pooling, concatenation, affine and addition ops,
and a tiny net of the CNN families' ops (grouped and depthwise convs, clamp and hardswish
epilogues, squeeze-and-excitation).

    python fuzz/make_corpus.py OUT_DIR
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import torch


def encode(spec) -> bytes:
    words = [len(spec.meta), *spec.meta, len(spec.ops), *spec.ops, len(spec.weights),
             *[w.numel() for w in spec.weights]]
    return struct.pack(f"<{len(words)}q", *words)


class _Branchy(torch.nn.Module):
    """Tiny net with the op kinds the CIFAR ResNets lack: max pooling, concatenation, a standalone
    BatchNorm and ReLU (affine), an addition, and a two-layer head."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.a = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.bn = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = torch.relu(self.bn(self.mid(y) + y))
        y = self.down(y)
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.gap(y), 1))))


class _Families(torch.nn.Module):
    """Tiny net with the op kinds of the CNN families: a gated expansion (Hardswish), a depthwise
    conv that follows its gate (ReLU6), a grouped conv, squeeze-and-excitation, and a
    Linear-Hardswish head."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.grouped = nn.Sequential(nn.Conv2d(16, 8, 3, 2, 1, groups=4, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 12), nn.Hardswish(), nn.Linear(12, 10))

    def forward(self, x):
        y = self.dw(self.expand(self.stem(x)))
        y = y * torch.nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        y = self.grouped(y)
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def families_model(gated: bool = True):
    """The _Families net in eval mode (decoupled when ``gated``), untrained, seeded."""
    from dyninfer.nn import decouple

    torch.manual_seed(0)
    model = _Families()
    return (decouple(model) if gated else model).eval()


def save_artefact(path: Path, model, size: int) -> None:
    import dyninfer

    path.parent.mkdir(parents=True, exist_ok=True)
    dyninfer.compile(model, input_shape=(3, size, size)).save(path, format="runtime")
    print(f"{path} ({path.stat().st_size} bytes)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    from dyninfer.compiler.planner import build_plan
    from dyninfer.models import create_model, list_models

    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name in list_models():
        if name not in ("resnet20", "resnet56"):
            continue  # the others are slow under the sanitizers; _Branchy covers their op kinds
        for gated in (True, False):
            model = create_model(name, gated=gated).eval()
            for size in (8,):
                spec = build_plan(model, (3, size, size))
            path = out / f"{name}_{'gated' if gated else 'dense'}_{size}px.bin"
            path.write_bytes(encode(spec))
            print(f"{path} ({path.stat().st_size} bytes)")
            save_artefact(out / "artefacts" / f"{name}_{'gated' if gated else 'dense'}_{size}px.dyninfer", model, size)
    from dyninfer.nn import decouple

    for gated in (True, False):
        model = _Branchy().eval()
        spec = build_plan(decouple(model, skip=["down"]).eval() if gated else model, (3, 8, 8))
        path = out / f"branchy_{'gated' if gated else 'dense'}_8px.bin"
        path.write_bytes(encode(spec))
        print(f"{path} ({path.stat().st_size} bytes)")
        save_artefact(out / "artefacts" / f"branchy_{'gated' if gated else 'dense'}_8px.dyninfer",
                      decouple(_Branchy().eval(), skip=["down"]).eval() if gated else _Branchy().eval(), 8)
    for gated in (True, False):
        spec = build_plan(families_model(gated), (3, 8, 8))
        path = out / f"families_{'gated' if gated else 'dense'}_8px.bin"
        path.write_bytes(encode(spec))
        print(f"{path} ({path.stat().st_size} bytes)")
        save_artefact(out / "artefacts" / f"families_{'gated' if gated else 'dense'}_8px.dyninfer",
                      families_model(gated), 8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
