"""Deployment artefact (dyninfer.deploy): round trips that keep logits and paths bit-identical,
corrupt / truncated / mismatched files, atomic writes, TorchScript in a fresh process,
concurrent callers and memory over 10,000 calls."""
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch import nn

import dyninfer
from dyninfer.deploy import ArtefactError, FORMAT_VERSION, META_FILE

from _models import randomize

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def engine():
    return dyninfer.compile(randomize(dyninfer.create_model("resnet20"), seed=1))


@pytest.fixture(scope="module")
def artefact(engine, tmp_path_factory):
    return engine.save(tmp_path_factory.mktemp("art") / "resnet20.dyninfer", format="torchscript")


def _user_model() -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU(),
                        nn.Conv2d(12, 6, 1), nn.Flatten())
    return randomize(dyninfer.decouple(net), seed=3)


CASES = {
    "resnet20-learned": lambda: dyninfer.compile(randomize(dyninfer.create_model("resnet20"), 2)),
    "resnet20-open": lambda: dyninfer.compile(randomize(dyninfer.create_model("resnet20"), 2), gates="open"),
    "resnet20-force-keep": lambda: dyninfer.compile(randomize(dyninfer.create_model("resnet20"), 2), force_keep=0.4),
    "user-model-9x13": lambda: dyninfer.compile(_user_model(), input_shape=(3, 9, 13)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_is_bit_identical(case, tmp_path):
    original = CASES[case]()
    path = original.save(tmp_path / "m.dyninfer", format="torchscript")
    loaded = dyninfer.load(path)
    x = torch.randn(5, *original.input_shape, generator=torch.Generator().manual_seed(0))
    a, pa = original(x, return_path=True)
    b, pb = loaded(x, return_path=True)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert loaded.gates_mode == original.gates_mode
    assert loaded.gate_names == original.gate_names and loaded.gate_sizes == original.gate_sizes
    assert loaded.input_shape == original.input_shape and loaded.output_shape == original.output_shape
    assert loaded.conv_names == original.conv_names and loaded.isa == original.isa
    if case != "resnet20-open":
        assert 0 < pb.mean() < 1  # gates really select: the comparison covers input-dependent paths
    else:
        assert bool((pb == 1).all())
    assert loaded.split_path(pb).keys() == original.split_path(pa).keys()
    assert dyninfer.deploy.read_metadata(path)["gates"] == original.gates_mode


def test_file_holds_no_pickled_python_objects(artefact):
    """TorchScript's data.pkl may only name TorchScript types (``__torch__.*``, compiled from the
    archive's own code/ folder, never imported from Python) and torch's list/tensor builders."""
    import pickletools

    with zipfile.ZipFile(artefact) as zf:
        names = zf.namelist()
        data = zf.read(next(n for n in names if n.endswith("/data.pkl")))
    assert all(n.startswith("resnet20/") for n in names)  # archive folder named after the file
    assert "resnet20/extra/" + META_FILE in names
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert "__torch__.torch.classes.dyninfer Plan" in globals_  # the plan via its def_pickle
    # beyond TorchScript types only what torch.load(weights_only=True) also allows
    allowed = {"collections OrderedDict", "torch FloatStorage", "torch._utils _rebuild_tensor_v2"}
    assert all(g.startswith(("__torch__.", "torch.jit._pickle ")) or g in allowed for g in globals_), globals_


# ---- corrupt, truncated, mismatched ---------------------------------------------------------


def _member_data_offset(path: Path, name: str) -> tuple[int, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = path.read_bytes()
    fnl, exl = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + fnl + exl, info


def _largest_tensor_record(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size).filename


def _flip(src: Path, dst: Path, fix_crc: bool) -> str:
    """Flip one byte inside the largest weight record; with fix_crc also rewrite the member's CRC32
    in the local header and the central directory (a modification no zip check can see)."""
    name = _largest_tensor_record(src)
    off, info = _member_data_offset(src, name)
    raw = bytearray(src.read_bytes())
    raw[off + info.file_size // 2] ^= 0x40
    if fix_crc:
        crc = zlib.crc32(bytes(raw[off:off + info.file_size]))
        struct.pack_into("<I", raw, info.header_offset + 14, crc)
        cd = raw.find(b"PK\x01\x02")
        while cd >= 0:  # central directory entry of this member
            fnl = struct.unpack_from("<H", raw, cd + 28)[0]
            if raw[cd + 46:cd + 46 + fnl] == name.encode():
                struct.pack_into("<I", raw, cd + 16, crc)
            cd = raw.find(b"PK\x01\x02", cd + 4)
        end = off + info.file_size  # data descriptor after the data (flag bit 3)
        if info.flag_bits & 0x08 and raw[end:end + 4] == b"PK\x07\x08":
            struct.pack_into("<I", raw, end + 4, crc)
    dst.write_bytes(bytes(raw))
    return name


def test_corrupt_weight_byte_fails_crc(artefact, tmp_path):
    bad = tmp_path / "crc.dyninfer"
    name = _flip(artefact, bad, fix_crc=False)
    with pytest.raises(ArtefactError, match=rf"crc.dyninfer is corrupt: CRC32 mismatch in zip member '{name}'"):
        dyninfer.load(bad)


def test_modified_weights_with_valid_crc_fail_sha256(artefact, tmp_path):
    bad = tmp_path / "sha.dyninfer"
    _flip(artefact, bad, fix_crc=True)
    with zipfile.ZipFile(bad) as zf:
        assert zf.testzip() is None  # the zip itself is consistent: only the sha256 can tell
    with pytest.raises(ArtefactError, match=r"sha.dyninfer is corrupt or was modified: sha256 of the plan"):
        dyninfer.load(bad)


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, 0.999])
def test_truncated_files_raise(artefact, tmp_path, keep):
    raw = artefact.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    bad = tmp_path / "trunc.dyninfer"
    bad.write_bytes(raw[:n])
    with pytest.raises(ArtefactError, match=r"trunc.dyninfer is truncated or not a dyninfer artefact"):
        dyninfer.load(bad)


def _rewrite(engine, path: Path, **changes) -> Path:
    module = dyninfer.deploy.script_engine(engine)
    meta = dyninfer.deploy._metadata(engine, module)
    meta.update(changes)
    return dyninfer.deploy._write(path, module, meta)


@pytest.mark.parametrize("changes,message", [
    ({"format_version": FORMAT_VERSION + 1}, rf"artefact format version {FORMAT_VERSION + 1}, this dyninfer .* reads version {FORMAT_VERSION}"),
    ({"format": "something-else"}, r"metadata 'format' is 'something-else'"),
    ({"gates": "open"}, r"metadata 'gates' = 'open' does not match the archived module's 'learned'"),
    ({"input_shape": [3, 16, 16]}, r"metadata 'input_shape' = \[3, 16, 16\] does not match .* \[3, 32, 32\]"),
    ({"output_shape": [11]}, r"metadata 'output_shape' = \[11\] does not match"),
    ({"gate_sizes": [16] * 17 + [64]}, r"metadata 'gate_sizes' = .* does not match"),
    ({"sha256": "0" * 64}, r"sha256 of the plan is .*, the metadata records 0000"),
])
def test_mismatched_metadata_raises(engine, tmp_path, changes, message):
    bad = _rewrite(engine, tmp_path / "mismatch.dyninfer", **changes)
    with pytest.raises(ArtefactError, match=message):
        dyninfer.load(bad)


def test_plan_of_an_earlier_layout_is_refused_by_version(engine, tmp_path):
    """Format-1 files written before the plan carried a version hold layout 1 (conv had 18 fields):
    refused from the metadata, before TorchScript builds anything, with what to do."""
    module = dyninfer.deploy.script_engine(engine)
    meta = dyninfer.deploy._metadata(engine, module)
    assert meta["plan_version"] == 4
    del meta["plan_version"]
    old = dyninfer.deploy._write(tmp_path / "old.dyninfer", module, meta)
    with pytest.raises(ArtefactError, match="layout version 1, this dyninfer reads version 4; rebuild the engine"):
        dyninfer.load(old)


def test_missing_required_metadata_field(engine, tmp_path):
    module = dyninfer.deploy.script_engine(engine)
    meta = dyninfer.deploy._metadata(engine, module)
    del meta["gate_names"]
    bad = dyninfer.deploy._write(tmp_path / "nofield.dyninfer", module, meta)
    with pytest.raises(ArtefactError, match=r"metadata lacks \['gate_names'\]"):
        dyninfer.load(bad)


def test_other_files_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ArtefactError, match=r"nothere.dyninfer does not exist"):
        dyninfer.load(tmp_path / "nothere.dyninfer")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(plain))
    with pytest.raises(ArtefactError, match=r"plain.pt is a zip archive but not a dyninfer artefact"):
        dyninfer.load(plain)
    from dyninfer.checkpoint import save_checkpoint
    ckpt = save_checkpoint(tmp_path / "ckpt", dyninfer.create_model("resnet20"), {})
    with pytest.raises(ArtefactError, match=r"looks like a safetensors checkpoint"):
        dyninfer.load(ckpt)


def test_save_is_atomic(engine, artefact, tmp_path, monkeypatch):
    target = tmp_path / "atomic.dyninfer"
    target.write_bytes(artefact.read_bytes())
    before = target.read_bytes()

    def failing_save(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        engine.save(target, format="torchscript")
    assert target.read_bytes() == before  # the old artefact is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.dyninfer"]  # no temp file left
    monkeypatch.undo()
    engine.save(target, format="torchscript")
    dyninfer.load(target)


# ---- TorchScript: a user module that calls the engine, scripted, saved, reloaded elsewhere ---


class Classifier(nn.Module):
    """A user's scripted service model: the engine plus softmax and the kept-channel count."""

    def __init__(self, engine_module):
        super().__init__()
        self.engine = engine_module

    def forward(self, x: torch.Tensor):
        logits, path = self.engine.run(x, True)
        return torch.softmax(logits, dim=1), path.sum(dim=1)


CHILD = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    import dyninfer._C  # registers torch.classes.dyninfer.Plan and torch.ops.dyninfer.run
    module = torch.jit.load(sys.argv[1])
    x = load_file(sys.argv[2])["x"]
    probs, kept = module(x)
    save_file({"probs": probs.contiguous(), "kept": kept.contiguous()}, sys.argv[3])
    print("pid-ok")
""")


def test_scripted_user_module_reloads_in_fresh_process(tmp_path, artefact, engine):
    from safetensors.torch import load_file, save_file

    inner, _ = dyninfer.deploy.load_module(artefact)
    scripted = torch.jit.script(Classifier(inner))
    scripted.save(str(tmp_path / "classifier.pt"))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "classifier.pt"),
                           str(tmp_path / "x.safetensors"), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and "pid-ok" in proc.stdout, proc.stderr[-2000:]
    out = load_file(str(tmp_path / "out.safetensors"))
    logits, path = engine(x, return_path=True)
    assert torch.equal(out["probs"], torch.softmax(logits, dim=1))
    assert torch.equal(out["kept"], path.sum(dim=1))


# ---- robustness: concurrent callers, memory over many calls ---------------------------------


def test_eight_concurrent_callers_match_serial(artefact):
    loaded = dyninfer.load(artefact)
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(1 + i % 3, 3, 32, 32, generator=g) for i in range(32)]
    serial = [loaded(x, return_path=True) for x in xs]
    barrier = threading.Barrier(8)

    def caller(k):
        barrier.wait()  # all 8 start together
        return [(i, loaded(xs[i], return_path=True)) for i in range(k, len(xs), 8)]

    with ThreadPoolExecutor(8) as pool:
        results = [r for chunk in pool.map(caller, range(8)) for r in chunk]
    assert len(results) == len(xs)
    for i, (logits, path) in results:
        assert torch.equal(logits, serial[i][0]) and torch.equal(path, serial[i][1])


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS read from /proc (Linux only)")
def test_memory_stays_flat_over_10000_calls(tmp_path):
    """10,000 calls (logits + path) on a loaded ResNet-20 at 8×8 input. Bound: 4 MiB. A leak of the
    smallest thing a call allocates — its (1, 10) logits or (1, 672) path tensor, ≥ 40 bytes of data
    plus a TensorImpl and storage of several hundred bytes — would grow RSS by ≥ 5 MB over 10,000
    calls; allocator noise after the warm-up is far below 1 MiB."""
    model = randomize(dyninfer.create_model("resnet20"), seed=7)
    path = dyninfer.compile(model, input_shape=(3, 8, 8)).save(tmp_path / "small.dyninfer", format="torchscript")
    loaded = dyninfer.load(path)
    x = torch.randn(1, 3, 8, 8)
    for _ in range(1000):  # warm-up: workspaces, allocator arenas
        loaded(x, return_path=True)
    before = _rss_bytes()
    kept = 0.0
    for _ in range(10_000):
        logits, p = loaded(x, return_path=True)
        kept += float(p[0, 0])
    growth = _rss_bytes() - before
    print(f"RSS {before / 2**20:.1f} MiB after 1,000 warm-up calls, growth over 10,000 more: {growth / 2**10:.0f} KiB")
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.2f} MiB over 10,000 calls"
    assert kept in (0.0, 10_000.0)  # the calls ran (the same input always makes the same decision)
