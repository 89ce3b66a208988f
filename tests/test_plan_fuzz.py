"""1,000 seeded mutations of a compiled ResNet-20 plan (tests/fuzz/plan_mutations.py), each built
and run once in a subprocess: every one must be rejected with an error or run; none may crash the
process. After a crash the replay goes on from the next mutation, so one run names every crashing seed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "fuzz" / "plan_mutations.py"
COUNT = 1000


def replay(count: int = COUNT, seed: int = 0, model: str = "resnet20") -> tuple[list[str], int]:
    crashes, start, done = [], 0, 0
    while start < count:
        r = subprocess.run([sys.executable, str(SCRIPT), "--count", str(count), "--seed", str(seed), "--start",
                            str(start), "--model", model], capture_output=True, text=True, timeout=900)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("seed ")]
        if r.returncode == 0:
            done += len(lines)
            break
        if not lines:
            raise AssertionError(f"fuzz driver failed before its first mutation (rc {r.returncode}): {r.stderr[-2000:]}")
        crashes.append(f"rc {r.returncode}: {lines[-1]}")
        done += len(lines)
        start = int(re.match(r"seed (\d+)", lines[-1]).group(1)) - seed * 1_000_003 + 1  # the crashing one is printed last
    return crashes, done


def test_no_mutated_plan_crashes_the_process():
    crashes, done = replay()
    assert done == COUNT
    assert not crashes, f"{len(crashes)} of {COUNT} mutated plans crashed the process:\n" + "\n".join(crashes)


def test_no_mutated_families_plan_crashes_the_process():
    """The same on a plan with grouped and depthwise convs, clamp / hardswish epilogues and an SE op."""
    crashes, done = replay(500, seed=1, model="families")
    assert done == 500
    assert not crashes, f"{len(crashes)} of 500 mutated plans crashed the process:\n" + "\n".join(crashes)
