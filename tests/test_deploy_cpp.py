"""The artefact in C++: examples/torchscript_cpp builds with CMake against the libtorch of the installed torch
wheel plus libdyninfer (csrc/ops.cpp + csrc/kernels, no Python), loads what engine.save wrote,
verifies it, and gives Python's logits and paths. Built once per session (about 1.5 minutes on 2
cores from scratch; incremental afterwards in build/examples_torchscript_cpp)."""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import dyninfer

from _models import randomize

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "examples_torchscript_cpp"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def runner() -> Path:
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {' and no '.join(missing)} on PATH: the C++ example cannot be built")
    prefix = torch.utils.cmake_prefix_path
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    for cmd in (["cmake", "-S", str(ROOT / "examples" / "torchscript_cpp"), "-B", str(BUILD), f"-DCMAKE_PREFIX_PATH={prefix}"],
                ["cmake", "--build", str(BUILD), "-j", "2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    exe = BUILD / "dyninfer_run"
    assert exe.is_file()
    return exe


def _run(exe: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("gates", ["learned", "open"])
def test_cpp_matches_python(runner, tmp_path, gates):
    engine = dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=11), gates=gates)
    art = engine.save(tmp_path / "m.dyninfer", format="torchscript")
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x.numpy().astype("<f4").tofile(tmp_path / "x.f32")
    proc = _run(runner, art, tmp_path / "x.f32", 7, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "verified (format 1, sha256 ok)" in proc.stdout and f"gates {gates}" in proc.stdout
    logits_cpp = torch.from_numpy(np.fromfile(tmp_path / "out.logits.f32", dtype="<f4")).view(7, 10)
    path_cpp = torch.from_numpy(np.fromfile(tmp_path / "out.path.f32", dtype="<f4")).view(7, -1)
    logits, path = dyninfer.load(art)(x, return_path=True)
    diff = (logits_cpp - logits).abs().max().item()
    print(f"C++ vs Python ({gates}): max |logit diff| = {diff:.3g}")
    assert torch.equal(path_cpp, path)
    assert torch.equal(logits_cpp, logits), f"max |diff| {diff}"  # same kernels, same ISA, same plan
    if gates == "learned":
        assert 0 < path.mean() < 1
    preds = proc.stdout.split("predictions:")[1].split()
    assert [int(p) for p in preds] == logits.argmax(1).tolist()


def test_cpp_rejects_bad_artefacts_and_inputs(runner, tmp_path):
    from test_deploy import _flip, _rewrite

    engine = dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=12))
    good = engine.save(tmp_path / "good.dyninfer", format="torchscript")
    _flip(good, tmp_path / "sha.dyninfer", fix_crc=True)
    (tmp_path / "trunc.dyninfer").write_bytes(good.read_bytes()[:5000])
    _rewrite(engine, tmp_path / "v2.dyninfer", format_version=2)
    # format version 2 and a TorchScript payload this program cannot deserialise: the version is
    # read from the zip first, so the message names it, not the payload
    import zipfile

    with zipfile.ZipFile(tmp_path / "v2.dyninfer") as src, \
            zipfile.ZipFile(tmp_path / "v2junk.dyninfer", "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, b"\x80\x02junk" if info.filename.endswith("data.pkl") else data)
    cases = {"sha.dyninfer": "corrupt or modified: sha256 of the plan is",
             "trunc.dyninfer": "truncated, corrupt or not a dyninfer artefact",
             "v2.dyninfer": "artefact format version 2, this program reads version 1",
             "v2junk.dyninfer": "artefact format version 2, this program reads version 1",
             "missing.dyninfer": "cannot open the artefact"}
    for name, message in cases.items():
        proc = _run(runner, tmp_path / name)
        assert proc.returncode == 2 and message in proc.stderr, (name, proc.stderr)
    np.zeros(100, dtype="<f4").tofile(tmp_path / "short.f32")
    proc = _run(runner, good, tmp_path / "short.f32", 1, tmp_path / "o")
    assert proc.returncode == 2 and "has 400 bytes, expected 12288 for (1, 3, 32, 32) float32" in proc.stderr
