"""A fresh virtual environment with numpy and the runtime only (no torch): the runtime-only build
(DYNINFER_RUNTIME_ONLY=1) installs there, loads an artefact and gives the torch engine's logits and
paths bit for bit, and the example HTTP service answers from it. About 2 minutes (pip + compile)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import torch

import dyninfer

from _models import randomize

ROOT = Path(__file__).resolve().parents[1]


def _sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_numpy_only_environment_runs_the_artefact(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _sh([py, "-m", "pip", "install", "--quiet", "numpy", "aiohttp", "setuptools", "wheel", "pybind11"], timeout=600)
    src = tmp_path / "src"  # a copy, so that the build does not touch the working tree's build folder
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copytree(ROOT / "dyninfer", src / "dyninfer", ignore=shutil.ignore_patterns("*.so", "__pycache__", "assets"))
    _sh([py, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", str(src)],
        env={**os.environ, "DYNINFER_RUNTIME_ONLY": "1", "MAX_JOBS": "2"}, timeout=900, cwd=tmp_path)

    engine = dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=3))
    art = engine.save(tmp_path / "r20.dyninfer", format="runtime")
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref, ref_path = engine(x, return_path=True)
    np.save(tmp_path / "x.npy", x.numpy())
    code = f"""
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("torch") is None, "torch is installed in the runtime environment"
import dyninfer.runtime as rt
m = rt.load({str(art)!r})
out, p = m.run(np.load({str(tmp_path / 'x.npy')!r}), return_path=True, threads=2)
np.save({str(tmp_path / 'out.npy')!r}, out); np.save({str(tmp_path / 'p.npy')!r}, p)
print(json.dumps({{"isa": rt.isa(), "modules": sorted(k for k in sys.modules if k.startswith("torch"))}}))
"""
    r = _sh([py, "-c", code], cwd=tmp_path, timeout=120)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    assert np.array_equal(np.load(tmp_path / "out.npy"), ref.numpy())
    assert np.array_equal(np.load(tmp_path / "p.npy"), ref_path.numpy())

    # the example HTTP service, spawned by its load test, in the same torch-free environment
    out = tmp_path / "load.json"
    _sh([py, str(ROOT / "examples" / "service" / "loadtest.py"), "--spawn", str(art), "--requests", "100",
         "--concurrency", "4", "--timeout", "30", "--out", str(out)], cwd=tmp_path, timeout=300)
    load = json.loads(out.read_text())
    assert load["ok"] == 100 and load["errors"] == 0
