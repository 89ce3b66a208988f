"""The torch-free runtime (artefact format 2): dyninfer.runtime (numpy only) and libdyninfer_rt (C)
give logits and paths bit-identical to dyninfer.compile on every registered model; bad files and
inputs are refused by name and never crash the process; the runtime imports with torch blocked."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import dyninfer
import dyninfer.runtime as rt
from dyninfer.deploy import ArtefactError

from _models import randomize

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _saved(tmp_path, name="resnet20", gates="learned", seed=1):
    model = randomize(dyninfer.create_model(name), seed=seed)
    engine = dyninfer.compile(model, gates=gates)
    path = engine.save(tmp_path / f"{name}_{gates}.dyninfer", format="runtime")
    c, h, w = engine.input_shape
    x = torch.randn(5, c, h, w, generator=torch.Generator().manual_seed(seed))
    return engine, path, x


@pytest.mark.parametrize("name", dyninfer.list_models())
def test_runtime_bit_identical_on_every_registered_model(tmp_path, name):
    engine, path, x = _saved(tmp_path, name)
    ref, ref_path = engine(x, return_path=True)
    model = rt.load(path)
    for threads in (1, 2):
        out, p = model.run(x.numpy(), return_path=True, threads=threads)
        assert np.array_equal(out, ref.numpy()) and np.array_equal(p, ref_path.numpy())
    assert model.gate_names == engine.gate_names and model.gate_sizes == engine.gate_sizes
    assert 0.05 < p.mean() < 0.95  # the randomised gates select subsets
    # dyninfer.load reads the same file back into a torch CompiledModel
    again = dyninfer.load(path)
    assert torch.equal(again(x), ref) and again.artefact["format"] == "dyninfer-runtime"


def test_dense_mode_and_bytes(tmp_path):
    engine, path, x = _saved(tmp_path, gates="open")
    model = rt.load(path.read_bytes())
    out, p = model.run(x.numpy(), return_path=True)
    assert model.gates_mode == "open" and np.array_equal(out, engine(x).numpy()) and p.min() == 1.0


def test_bad_inputs_are_refused(tmp_path):
    _, path, x = _saved(tmp_path)
    model = rt.load(path)
    with pytest.raises(TypeError, match="float32"):
        model.run(x.numpy().astype(np.float64))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 3, 32, 32\), got \(5, 3, 32\)"):
        model.run(x.numpy()[:, :, :, 0])
    bad = x.numpy().copy()
    bad[2, 1, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.run(bad)
    with pytest.raises(TypeError, match="numpy float32 array"):
        model.run(x)
    assert model.run(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 10)
    # a non-contiguous view runs like its copy
    big = np.ascontiguousarray(np.repeat(x.numpy(), 2, axis=3))[:, :, :, ::2]
    assert np.array_equal(model.run(big), model.run(np.ascontiguousarray(big)))


def test_bad_files_name_the_problem(tmp_path):
    engine, path, _ = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    with pytest.raises(rt.ArtefactError, match="does not exist"):
        rt.load(tmp_path / "missing.dyninfer")
    with pytest.raises(rt.ArtefactError, match="truncated"):
        rt.load(bytes(data[: len(data) // 2]))
    flipped = bytearray(data)
    flipped[-100] ^= 0x40  # a weight byte
    with pytest.raises(rt.ArtefactError, match="digest mismatch"):
        rt.load(bytes(flipped))
    rt.load(bytes(flipped), verify=False)  # verify=False skips only the digest
    wrong_version = bytes(data).replace(b'"format_version":"2"', b'"format_version":"9"')
    assert wrong_version != bytes(data)
    with pytest.raises(rt.ArtefactError, match="format version 9, this runtime reads version 2"):
        rt.load(wrong_version)
    # a plan of the earlier layout (version 1: conv had an unused 18th field) is refused before it is parsed
    assert b'"plan_version":"4"' in bytes(data)
    old_plan = bytes(data).replace(b'"plan_version":"4"', b'"plan_version":"1"')
    with pytest.raises(rt.ArtefactError, match="plan version 1, this runtime reads plan version 4; rebuild the engine"):
        rt.load(old_plan)
    old = engine.save(tmp_path / "old.dyninfer", format="torchscript")  # format 1
    with pytest.raises(rt.ArtefactError, match="TorchScript artefact .* re-save it"):
        rt.load(old)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(dyninfer.load(old)(x), engine(x))  # dyninfer.load still reads format 1
    with pytest.raises(ArtefactError, match="digest mismatch"):  # the torch side refuses it the same way
        (tmp_path / "flipped.dyninfer").write_bytes(bytes(flipped))
        dyninfer.load(tmp_path / "flipped.dyninfer")


def test_runtime_imports_and_runs_with_torch_blocked(tmp_path):
    engine, path, x = _saved(tmp_path)
    ref, ref_path = engine(x, return_path=True)
    np.save(tmp_path / "x.npy", x.numpy())
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any 'import torch' now raises ImportError
        import numpy as np
        import dyninfer.runtime as rt
        m = rt.load({str(path)!r})
        out, p = m.run(np.load({str(tmp_path / 'x.npy')!r}), return_path=True)
        np.save({str(tmp_path / 'out.npy')!r}, out); np.save({str(tmp_path / 'p.npy')!r}, p)
        assert not any(k == "torch" or k.startswith("torch.") for k, v in sys.modules.items() if v is not None)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    assert np.array_equal(np.load(tmp_path / "out.npy"), ref.numpy())
    assert np.array_equal(np.load(tmp_path / "p.npy"), ref_path.numpy())


@pytest.fixture(scope="module")
def c_runner() -> Path:
    missing = [t for t in ("cmake", "cc", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {' and no '.join(missing)} on PATH: libdyninfer_rt cannot be built")
    build = ROOT / "build" / "rt"
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)]):
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=900)
    return build / "dyninfer_run_c"


def test_c_api_without_libtorch(tmp_path, c_runner):
    libs = subprocess.run(["ldd", str(c_runner.parent / "libdyninfer_rt.so")], capture_output=True, text=True).stdout
    assert "libtorch" not in libs and "libc10" not in libs and "python" not in libs
    engine, path, x = _saved(tmp_path, "resnet56")
    ref, ref_path = engine(x, return_path=True)
    x.numpy().tofile(tmp_path / "x.f32")
    out = subprocess.run([str(c_runner), str(path), str(tmp_path / "x.f32"), "5", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.fromfile(tmp_path / "o.logits.f32", np.float32).reshape(5, -1), ref.numpy())
    assert np.array_equal(np.fromfile(tmp_path / "o.path.f32", np.float32).reshape(5, -1), ref_path.numpy())
    # a corrupt file: exit 2 and a one-line message naming the file and the problem
    bad = tmp_path / "bad.dyninfer"
    bad.write_bytes(path.read_bytes()[:1000])
    out = subprocess.run([str(c_runner), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad.dyninfer" in out.stderr and "truncated" in out.stderr
    from dyninfer._C import bf16_supported

    if bf16_supported() and engine.isa == "avx512":  # a bf16 artefact runs bf16 in C too, bit for bit
        engine.set_precision("bf16")
        ref16 = engine(x)
        engine.save(tmp_path / "bf16.dyninfer")
        out = subprocess.run([str(c_runner), str(tmp_path / "bf16.dyninfer"), str(tmp_path / "x.f32"), "5",
                              str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert np.array_equal(np.fromfile(tmp_path / "b.logits.f32", np.float32).reshape(5, -1), ref16.numpy())
        assert not np.array_equal(ref16.numpy(), ref.numpy())
        summary = subprocess.run([str(c_runner), str(tmp_path / "bf16.dyninfer")], capture_output=True, text=True,
                                 timeout=60)
        assert "precision bf16" in summary.stdout, summary.stdout


def test_cpp_example_without_libtorch(tmp_path, c_runner):
    """examples/cpp (C++ through dyninfer_rt.hpp): bit-identical logits and paths, predictions printed;
    a bad artefact, input or batch exits 2 with a one-line message."""
    exe = c_runner.parent / "dyninfer_run_cpp"
    libs = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    assert "libtorch" not in libs and "libc10" not in libs
    engine, path, x = _saved(tmp_path, "resnet56")
    ref, ref_path = engine(x, return_path=True)
    x.numpy().tofile(tmp_path / "x.f32")
    out = subprocess.run([str(exe), str(path), str(tmp_path / "x.f32"), "5", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert np.array_equal(np.fromfile(tmp_path / "o.logits.f32", np.float32).reshape(5, -1), ref.numpy())
    assert np.array_equal(np.fromfile(tmp_path / "o.path.f32", np.float32).reshape(5, -1), ref_path.numpy())
    assert [int(p) for p in out.stdout.split("predictions:")[1].split()] == ref.argmax(1).tolist()
    bad = tmp_path / "bad.dyninfer"
    bad.write_bytes(path.read_bytes()[:1000])
    np.zeros(100, dtype="<f4").tofile(tmp_path / "short.f32")
    for args, message in [([bad], "truncated"), ([tmp_path / "missing.dyninfer"], "missing.dyninfer"),
                          ([path, tmp_path / "short.f32", "1", tmp_path / "o2"], "has 400 bytes, expected"),
                          ([path, tmp_path / "x.f32", "five", tmp_path / "o2"], "BATCH must be a positive integer")]:
        out = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)


def test_mutated_artefacts_never_crash(tmp_path):
    """1,000 seeded mutations (byte flips, truncations, plan ints at edge values, header digits and
    bytes), loaded with verify=False and run in a subprocess: each is rejected or runs; none crashes."""
    _, path, _ = _saved(tmp_path)
    script, count, start, crashes = ROOT / "tests" / "fuzz" / "artefact_mutations.py", 1000, 0, []
    while start < count:
        r = subprocess.run([sys.executable, str(script), str(path), "--count", str(count), "--start", str(start)],
                           capture_output=True, text=True, timeout=900)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("seed ")]
        if r.returncode == 0:
            assert len(lines) == count - start
            break
        # a signal (negative rc) is a crash; any other failure (an uncaught exception type, an error
        # without a message: rc 1 or 3) fails the test with the driver's message
        assert r.returncode < 0 and lines, f"driver failed (rc {r.returncode}): {r.stderr[-2000:]}"
        crashes.append(f"rc {r.returncode}: {lines[-1]}")
        start = int(lines[-1].split()[1]) + 1
    assert not crashes, f"{len(crashes)} of {count} mutated artefacts crashed the process:\n" + "\n".join(crashes)


def _set_int(data: bytes, tensor: str, index: int, value: int) -> bytes:
    """The artefact with int64 element ``index`` of ``tensor`` set to ``value`` (digest not fixed)."""
    import json
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    lo, _ = json.loads(data[8:8 + n])[tensor]["data_offsets"]
    b = bytearray(data)
    struct.pack_into("<q", b, 8 + n + lo + 8 * index, value)
    return bytes(b)


@pytest.mark.parametrize("tensor,index,value,message", [
    ("plan.gate_sizes", 0, 1 << 62, "gate size .* out of range"),       # summed: signed overflow before the check
    ("plan.output_shape", 0, -5, "output_shape has a bad dimension"),
    ("plan.input_shape", 1, 1 << 40, "input_shape does not match"),
    ("plan.ops", 2, -1, "op 0"),                                          # the plan validator names the op
])
def test_edge_values_are_refused_by_name(tmp_path, tensor, index, value, message):
    """Found by fuzz/artefact_fuzzer: a gate size of 2^62 overflowed the path-length sum (UBSan)."""
    _, path, _ = _saved(tmp_path)
    with pytest.raises(rt.ArtefactError, match=message):
        rt.load(_set_int(path.read_bytes(), tensor, index, value), verify=False)
