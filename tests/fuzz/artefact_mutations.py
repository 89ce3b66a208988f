"""Seeded mutations of a runtime artefact (format 2), each loaded with dyninfer.runtime (verify=False,
so the digest does not stop it) and run once on a small batch. Torch-free. Prints "seed N kind"
before each mutation; a crash therefore names its seed on the last line. Exit 0 when every
mutation was rejected with an exception or ran.

    python tests/fuzz/artefact_mutations.py ARTEFACT --count 1000 [--seed 0] [--start 0]
"""
from __future__ import annotations

import argparse
import json
import random
import struct
import sys

import numpy as np

import dyninfer.runtime as rt

EDGES = [0, 1, -1, 2, 3, 7, 8, 63, 64, 65, 255, 1 << 15, (1 << 31) - 1, -(1 << 31), 1 << 32, (1 << 63) - 1, -(1 << 63)]


def layout(data: bytes) -> tuple[int, dict]:
    n = struct.unpack("<Q", data[:8])[0]
    return 8 + n, json.loads(data[8:8 + n])


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    start, header = layout(data)
    b = bytearray(data)
    kind = rng.choice(["flip", "flip", "truncate", "plan_int", "plan_int", "plan_int", "header_digit", "header_char"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[:rng.randrange(len(b))]
    elif kind == "plan_int":  # int64 fields of the plan set to edge or random values
        name = rng.choice(["plan.meta", "plan.ops", "plan.ops", "plan.input_shape", "plan.output_shape",
                           "plan.gate_sizes"])
        lo, hi = header[name]["data_offsets"]
        for _ in range(rng.randint(1, 3)):
            if hi - lo < 8:
                break
            k = rng.randrange((hi - lo) // 8)
            v = rng.choice(EDGES) if rng.random() < 0.7 else rng.randint(-100, 5000)
            struct.pack_into("<q", b, start + lo + 8 * k, v)
    elif kind == "header_digit":  # a digit of the JSON header (shapes, offsets, counts)
        digits = [i for i in range(8, start) if chr(b[i]).isdigit()]
        for _ in range(rng.randint(1, 3)):
            b[rng.choice(digits)] = ord(rng.choice("0123456789"))
    else:  # any byte of the header
        i = rng.randrange(8, start)
        b[i] = rng.randrange(256)
    return kind, bytes(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artefact")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0)
    args = ap.parse_args(argv)
    data = open(args.artefact, "rb").read()
    model = rt.load(data)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    outcomes = {"rejected": 0, "ran": 0}
    for i in range(args.start, args.count):
        seed = args.seed * 1_000_003 + i
        kind, blob = mutate(random.Random(seed), data)
        print(f"seed {seed} {kind}", flush=True)
        try:
            m = rt.load(blob, verify=False)
            m.run(x, return_path=True, threads=1 + (i % 2))
            outcomes["ran"] += 1
        except (ValueError, TypeError, MemoryError) as exc:
            outcomes["rejected"] += 1
            if not str(exc):
                print(f"seed {seed}: an error without a message", file=sys.stderr)
                return 3
    print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
