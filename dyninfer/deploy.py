"""Deployment artefacts: one file that Python, TorchScript and C++ load and run the same way.

    engine.save("resnet56.dyninfer")                          # format 2 (save_runtime; dyninfer.runtime)
    engine.save("resnet56.ts.dyninfer", format="torchscript")  # format 1 (save; this module's TorchScript archive)
    engine = dyninfer.load(path)                              # either; verified; bit-identical logits and paths

Format 2 is the torch-free runtime's (dyninfer.runtime, csrc/runtime/runtime.h). Format 1
(``FORMAT_VERSION`` 1, below): a TorchScript archive (``torch.jit.save`` zip) of a small scripted
module, :class:`EngineModule`, holding the engine's ``torch.classes.dyninfer.Plan`` as an attribute.
The plan serialises through its TORCH_LIBRARY ``def_pickle`` as plain lists (meta, ops, conv
names) and float32 tensors (BN-folded weights), stored as raw tensor records in the zip — the
archive holds TorchScript code and tensor data, no pickled Python objects, and loading it runs no
Python code. Its extra file ``extra/dyninfer.json`` records

  ``format``          "dyninfer-engine"
  ``format_version``  1
  ``gates``           "learned" | "open"
  ``input_shape``     [C, H, W];  ``output_shape``: per-sample logits shape
  ``gate_names``, ``gate_sizes``, ``conv_names``
  ``sha256``          :func:`plan_digest` of the plan state and the fields above
  ``precision``       "fp32" | "bf16" (absent: fp32): re-applied on load with set_precision, so
                      a CPU without AVX512_BF16 warns and runs fp32. Not in the digest: the
                      weights are always the fp32 ones, bf16 packs from them deterministically.
                      (``torch::jit::load`` in C++ reads the module only: it runs fp32 until the
                      caller runs the plan's ``set_precision``.)
  ``dyninfer_version``, ``torch_version``, ``isa_at_save`` (informational)

Why a TorchScript archive rather than safetensors + a JSON: the same file then loads in C++ with
``torch::jit::load`` (examples/torchscript_cpp) and can be a submodule of a user's scripted module, with no
second loader to keep in step. The module's attributes (``open_gates``, ``input_shape``, ...) carry
what a C++ caller needs; ``forward(x)`` returns logits, ``run(x, return_path)`` (logits, path).

Loading checks, each failure raising :class:`ArtefactError` naming the file and what is wrong:
zip structure (truncation), the metadata's format and version (before any TorchScript is
loaded), the CRC32 of every zip member (libtorch does not check them), the sha256 of the plan
state recomputed from the loaded tensors, and the shapes: metadata vs module attributes, path
length vs Σ gate sizes, and an empty-batch run giving the recorded output size. Writes are atomic
(temporary file in the same folder, fsync, os.replace, fsync of the folder).
"""

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ._ext import load_extension
from ._io import default_mode, fsync_dir

__all__ = ["save", "save_runtime", "load", "load_module", "read_metadata", "script_engine", "plan_digest", "EngineModule",
           "ArtefactError", "FORMAT", "FORMAT_VERSION", "META_FILE"]

FORMAT = "dyninfer-engine"
FORMAT_VERSION = 1
FORMAT_RUNTIME = "dyninfer-runtime"  # format 2: dyninfer.runtime / save_runtime
META_FILE = "dyninfer.json"  # stored as <archive>/extra/dyninfer.json by torch.jit.save
_REQUIRED = ("format", "format_version", "gates", "input_shape", "output_shape", "gate_names", "gate_sizes",
             "conv_names", "sha256")


class ArtefactError(RuntimeError):
    """A deployment artefact is missing, truncated, corrupt, of another format version, or its
    contents do not match its metadata; the message names the file and the field."""


class EngineModule(nn.Module):
    """What the artefact holds: a scripted wrapper of one compiled plan.

    forward(x) -> logits (B, *output_shape); run(x, return_path) -> (logits, path (B, Σ N_l) or
    (0, Σ N_l)). Attributes are plain TorchScript types so C++ reads them with ``module.attr``."""

    format_version: int
    open_gates: bool
    input_shape: List[int]
    output_shape: List[int]
    gate_names: List[str]
    gate_sizes: List[int]
    conv_names: List[str]

    def __init__(self, plan: Any, open_gates: bool, input_shape: Sequence[int], output_shape: Sequence[int],
                 gate_names: Sequence[str], gate_sizes: Sequence[int], conv_names: Sequence[str]):
        super().__init__()
        self.plan = plan
        self.format_version = FORMAT_VERSION
        self.open_gates = bool(open_gates)
        self.input_shape = [int(v) for v in input_shape]
        self.output_shape = [int(v) for v in output_shape]
        self.gate_names = [str(v) for v in gate_names]
        self.gate_sizes = [int(v) for v in gate_sizes]
        self.conv_names = [str(v) for v in conv_names]

    def forward(self, x: Tensor) -> Tensor:
        logits, _ = torch.ops.dyninfer.run(self.plan, x, False, self.open_gates)
        return logits.view([x.size(0)] + self.output_shape)

    @torch.jit.export
    def run(self, x: Tensor, return_path: bool) -> Tuple[Tensor, Tensor]:
        logits, path = torch.ops.dyninfer.run(self.plan, x, return_path, self.open_gates)
        return logits.view([x.size(0)] + self.output_shape), path

    @torch.jit.export
    def plan_state(self) -> Tuple[List[int], List[int], List[Tensor], List[str]]:
        """(meta, ops, weights, conv names): what the plan is built from (its pickled state)."""
        return self.plan.__getstate__()


# ---------------------------------------------------------------------------------------------
# checksum


def plan_digest(meta: Sequence[int], ops: Sequence[int], weights: Sequence[Tensor], conv_names: Sequence[str],
                fields: dict[str, Any]) -> str:
    """sha256 of the plan state and the metadata fields, computed by the extension
    (csrc/kernels/digest.h, which examples/torchscript_cpp links too: one implementation of the byte layout)."""
    load_extension()
    from ._C import plan_digest as _digest

    ws = []
    for w in weights:
        if w.dtype != torch.float32:
            raise ArtefactError(f"plan weight of dtype {w.dtype}: the engine holds float32 only")
        ws.append(w.detach().cpu())
    return _digest([int(v) for v in meta], [int(v) for v in ops], ws, list(conv_names), fields["gates"] == "open",
                   [int(v) for v in fields["input_shape"]], [int(v) for v in fields["output_shape"]],
                   list(fields["gate_names"]), [int(v) for v in fields["gate_sizes"]])


# ---------------------------------------------------------------------------------------------
# save


def script_engine(engine) -> torch.jit.ScriptModule:
    """The engine as a scripted :class:`EngineModule` (shares the engine's plan). Use it as a
    submodule of your own module before torch.jit.script, or call it from TorchScript."""
    load_extension()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=DeprecationWarning)
        return torch.jit.script(EngineModule(engine.plan, engine.gates_mode == "open", engine.input_shape,
                                             engine.output_shape, engine.gate_names, engine.gate_sizes,
                                             engine.conv_names))


def _metadata(engine, module: torch.jit.ScriptModule) -> dict[str, Any]:
    fields = {"gates": engine.gates_mode, "input_shape": list(engine.input_shape),
              "output_shape": list(engine.output_shape), "gate_names": list(engine.gate_names),
              "gate_sizes": list(engine.gate_sizes), "conv_names": list(engine.conv_names)}
    meta, ops, weights, names = module.plan_state()
    from . import __version__
    from ._C import plan_schema
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "plan_version": plan_schema()["version"], **fields,
            "sha256": plan_digest(meta, ops, weights, names, fields), "precision": engine.precision,
            "dyninfer_version": __version__, "torch_version": torch.__version__, "isa_at_save": engine.isa}


def _write(path: Path, module: torch.jit.ScriptModule, meta: dict[str, Any]) -> Path:
    """torch.jit.save into a temporary folder beside ``path`` (so the archive's inner folder is
    named after the file), fsync, os.replace, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = os.path.join(tmp_dir, path.stem)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.save. is deprecated", category=DeprecationWarning)
            torch.jit.save(module, tmp, _extra_files={META_FILE: json.dumps(meta, sort_keys=True, indent=1)})
        os.chmod(tmp, default_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.rmdir(tmp_dir)
    fsync_dir(path.parent)
    return path


def save(engine, path: str | os.PathLike) -> Path:
    """Write ``engine`` (a dyninfer.CompiledModel) to ``path`` atomically; returns the path."""
    module = script_engine(engine)
    return _write(Path(path), module, _metadata(engine, module))


def save_runtime(engine, path: str | os.PathLike) -> Path:
    """Write ``engine`` as the torch-free runtime artefact (dyninfer.runtime, format 2) atomically."""
    from . import __version__
    from .runtime import save_artefact

    spec = engine.spec  # what the engine's plan was built from
    meta, ops, weights, names = spec.meta, spec.ops, spec.weights, spec.conv_names
    fields = {"gates": engine.gates_mode, "input_shape": list(engine.input_shape),
              "output_shape": list(engine.output_shape), "gate_names": list(engine.gate_names),
              "gate_sizes": list(engine.gate_sizes)}
    digest = plan_digest(meta, ops, weights, names, fields)
    return save_artefact(path, meta=meta, ops=ops, weights=[w.detach().cpu().contiguous().numpy() for w in weights],
                         conv_names=list(names), gate_names=fields["gate_names"], gate_sizes=fields["gate_sizes"],
                         input_shape=fields["input_shape"], output_shape=fields["output_shape"], gates=engine.gates_mode,
                         digest=digest, precision=engine.precision,
                         extra={"dyninfer_version": __version__, "isa_at_save": engine.isa})


def _load_runtime(path: Path):
    """A CompiledModel from a runtime artefact: the C++ runtime verifies it first (container,
    versions, digest, every plan field), then the torch extension builds the same plan."""
    from safetensors.torch import load as st_load

    from .compiler.planner import PlanSpec
    from .engine import CompiledModel
    from .runtime import ArtefactError as RuntimeArtefactError
    from .runtime import load as rt_load

    data = path.read_bytes()  # read once: what is verified is what is built
    try:
        with warnings.catch_warnings():
            # its "saved in bf16, runs fp32" warning names <bytes>: _apply_precision below gives the
            # same one once, naming the file
            warnings.simplefilter("ignore", RuntimeWarning)
            model = rt_load(data)
    except RuntimeArtefactError as exc:
        msg = str(exc).replace("<bytes>", str(path), 1)
        if "has no 'format'" in msg or "artefact format '" in msg:  # safetensors, but not an artefact
            msg += (" (it looks like a safetensors checkpoint: rebuild the model with dyninfer.checkpoint.load_model "
                    "and dyninfer.compile it, then engine.save)")
        raise ArtefactError(msg) from None
    tensors = st_load(data)
    weights = [tensors[f"weight.{i:05d}"] for i in range(len(tensors) - 5)]
    spec = PlanSpec(meta=tensors["plan.meta"].tolist(), ops=tensors["plan.ops"].tolist(), weights=weights,
                    conv_names=list(model.conv_names), gate_names=list(model.gate_names),
                    gate_sizes=list(model.gate_sizes), input_shape=tuple(model.input_shape),
                    output_shape=tuple(model.output_shape))
    engine = CompiledModel.from_plan(spec, model.gates_mode)
    engine.artefact = {"path": str(path), "format": FORMAT_RUNTIME, "format_version": 2, "sha256": model.digest,
                       "gates": model.gates_mode, "precision": model.requested_precision}
    _apply_precision(engine, model.requested_precision, path)
    return engine


def _apply_precision(engine, precision: str, path: Path) -> None:
    """The artefact's precision on the loaded engine; a CPU without it warns and runs fp32."""
    if precision == "fp32":
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.set_precision(precision)
    for w in caught:
        warnings.warn(f"{path} was saved in {precision}; {str(w.message).removeprefix('dyninfer: ')}",
                      RuntimeWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# load


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise ArtefactError(f"artefact {path} does not exist" + (
            "" if path.parent.is_dir() else f" (folder {path.parent} does not exist either)"))
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        with open(path, "rb") as f:
            head = f.read(8)
        hint = ""
        if len(head) == 8 and 8 + int.from_bytes(head, "little") <= path.stat().st_size:
            hint = (" (it looks like a safetensors checkpoint: rebuild the model with "
                    "dyninfer.checkpoint.load_model and dyninfer.compile it, then engine.save)")
        raise ArtefactError(f"artefact {path} is truncated or not a dyninfer artefact "
                            f"(not a readable TorchScript zip archive: {exc}){hint}") from exc


def _read_meta(path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    members = [n for n in zf.namelist() if n.endswith("/extra/" + META_FILE)]
    if len(members) != 1:
        raise ArtefactError(f"{path} is a zip archive but not a dyninfer artefact: "
                            f"no extra/{META_FILE} (members: {zf.namelist()[:5]}...)")
    try:
        meta = json.loads(zf.read(members[0]))
    except (zipfile.BadZipFile, ValueError, UnicodeDecodeError, OSError) as exc:
        raise ArtefactError(f"{path}: {members[0]} is corrupt: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtefactError(f"{path}: metadata 'format' is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                            f"expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(f"{path}: artefact format version {meta.get('format_version')!r}, this dyninfer "
                            f"({__name__}) reads version {FORMAT_VERSION}; re-save it with a matching dyninfer")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ArtefactError(f"{path}: metadata lacks {missing}")
    load_extension()
    from ._C import plan_schema
    plan_version = meta.get("plan_version", 1)  # files written before the plan carried a version hold version 1
    supported = plan_schema()["version"]
    if plan_version != supported:
        raise ArtefactError(f"{path}: its plan has layout version {plan_version!r}, this dyninfer reads version "
                            f"{supported}; rebuild the engine from its checkpoint "
                            f"(dyninfer.checkpoint.load_model, dyninfer.compile) and save it again")
    if meta["gates"] not in ("learned", "open"):
        raise ArtefactError(f"{path}: metadata 'gates' is {meta['gates']!r}, expected 'learned' or 'open'")
    if meta.get("precision", "fp32") not in ("fp32", "bf16"):
        raise ArtefactError(f"{path}: metadata 'precision' is {meta['precision']!r}, expected 'fp32' or 'bf16'")
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The artefact's metadata (format and version checked; contents not verified)."""
    p = Path(path)
    with _open_zip(p) as zf:
        return _read_meta(p, zf)


def _check_crc(path: Path, zf: zipfile.ZipFile) -> None:
    try:
        bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArtefactError(f"artefact {path} is corrupt or truncated: {exc}") from exc
    if bad is not None:
        raise ArtefactError(f"artefact {path} is corrupt: CRC32 mismatch in zip member {bad!r}")


def load_module(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """(verified scripted EngineModule, metadata). Every check in the module docstring."""
    load_extension()
    p = Path(path)
    with _open_zip(p) as zf:
        meta = _read_meta(p, zf)
        _check_crc(p, zf)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load. is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # libtorch reports every failure as RuntimeError / ValueError
        raise ArtefactError(f"artefact {p}: TorchScript could not load it: {str(exc).splitlines()[0]}") from exc
    _verify(p, module, meta)
    return module, meta


def _verify(p: Path, module: torch.jit.ScriptModule, meta: dict[str, Any]) -> None:
    attrs = {"gates": "open" if getattr(module, "open_gates", None) else "learned"}
    for key in ("input_shape", "output_shape", "gate_names", "gate_sizes", "conv_names"):
        if not hasattr(module, key):
            raise ArtefactError(f"{p}: the archived module has no attribute '{key}' (not an EngineModule)")
        attrs[key] = list(getattr(module, key))
    for key, value in attrs.items():
        if meta[key] != value:
            raise ArtefactError(f"{p}: metadata '{key}' = {meta[key]!r} does not match the archived module's "
                                f"{value!r}")
    try:
        plan_meta, ops, weights, names = module.plan_state()
    except Exception as exc:
        raise ArtefactError(f"{p}: cannot read the plan state: {exc}") from exc
    digest = plan_digest(plan_meta, ops, weights, names, meta)
    if digest != meta["sha256"]:
        raise ArtefactError(f"artefact {p} is corrupt or was modified: sha256 of the plan is {digest[:16]}…, "
                            f"the metadata records {str(meta['sha256'])[:16]}…")
    if list(names) != meta["conv_names"]:
        raise ArtefactError(f"{p}: plan conv names {list(names)[:3]}… differ from metadata 'conv_names'")
    if module.plan.path_len() != sum(meta["gate_sizes"]):
        raise ArtefactError(f"{p}: plan path length {module.plan.path_len()} != Σ metadata 'gate_sizes' "
                            f"{sum(meta['gate_sizes'])}")
    if len(meta["gate_sizes"]) != len(meta["gate_names"]):
        raise ArtefactError(f"{p}: {len(meta['gate_names'])} gate_names but {len(meta['gate_sizes'])} gate_sizes")
    shape = meta["input_shape"]
    if len(shape) != 3 or any(not isinstance(v, int) or v <= 0 for v in shape):
        raise ArtefactError(f"{p}: metadata 'input_shape' {shape} is not a positive (C, H, W)")
    try:  # the plan accepts the recorded input shape and produces the recorded output size
        logits, _ = module.run(torch.empty(0, *shape), False)
    except Exception as exc:
        raise ArtefactError(f"{p}: the plan rejects metadata 'input_shape' {shape}: "
                            f"{str(exc).splitlines()[0]}") from exc
    if list(logits.shape[1:]) != meta["output_shape"]:
        raise ArtefactError(f"{p}: the plan produces per-sample output {list(logits.shape[1:])}, metadata "
                            f"'output_shape' says {meta['output_shape']}")


def load(path: str | os.PathLike):
    """A dyninfer.CompiledModel from an artefact written by ``engine.save`` — verified, running the
    archived plan itself (same gates mode, gate names/sizes and shapes as the saved engine)."""
    from .compiler.planner import PlanSpec
    from .engine import CompiledModel

    p = Path(path)
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(9)
        if head[:2] != b"PK":  # not a zip archive (format 1)
            if len(head) == 9 and head[8:9] == b"{":  # a safetensors header: format 2
                return _load_runtime(p)
            raise ArtefactError(f"{p} is truncated or not a dyninfer artefact ({p.stat().st_size} bytes; neither "
                                f"a runtime artefact (format 2, safetensors) nor a TorchScript archive (format 1))")
    module, meta = load_module(path)
    plan_meta, ops, weights, names = module.plan_state()
    spec = PlanSpec(meta=list(plan_meta), ops=list(ops), weights=list(weights), conv_names=list(names),
                    gate_names=list(meta["gate_names"]), gate_sizes=list(meta["gate_sizes"]),
                    input_shape=tuple(meta["input_shape"]), output_shape=tuple(meta["output_shape"]))
    engine = CompiledModel.from_plan(spec, meta["gates"], plan=module.plan)
    engine.artefact = {"path": str(Path(path)), **{k: meta[k] for k in meta if k not in ("conv_names",)}}
    _apply_precision(engine, meta.get("precision", "fp32"), p)
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    """python -m dyninfer.deploy CHECKPOINT OUT [--gates learned|open] [--input-shape C H W]:
    compile a checkpoint (dyninfer.checkpoint format) and write its artefact."""
    import argparse
    import sys

    from .checkpoint import CheckpointError, load_model
    from .engine import compile as compile_model

    p = argparse.ArgumentParser(prog="python -m dyninfer.deploy", description=main.__doc__.split(":")[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--gates", choices=["learned", "open"], default="learned")
    p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--format", choices=["runtime", "torchscript"], default="runtime",
                   help="runtime (default): the torch-free artefact (dyninfer.runtime, libdyninfer_rt, the service examples); "
                        "torchscript: the TorchScript archive (examples/torchscript_cpp, embedding in scripted modules)")
    args = p.parse_args(argv)
    try:
        engine = compile_model(load_model(args.checkpoint), gates=args.gates, input_shape=args.input_shape)
        out = engine.save(args.out, format=args.format)
        load(out)  # read back and verify once
    except (CheckpointError, ArtefactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({engine}); verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
