"""Atomic file writes shared by checkpoints, path files and deployment artefacts: a temporary
file in the target's folder, mode 0666 & ~umask (what a plain open() gives), fsync, os.replace,
then fsync of the folder, so a crash leaves either the old file or the complete new one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(out: Path, blob: bytes) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        os.fchmod(fd, default_mode())  # mkstemp creates the file 0600
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(out.parent)


def read_safetensors(path: Path, kind: str, error: type[Exception]):
    """(tensors, metadata) of a safetensors file; ``error`` (message naming the ``kind`` of file and
    its path) when it is missing, truncated or corrupt. Content checks are the caller's."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise error(f"{kind} {path} does not exist" + (
            "" if path.parent.is_dir() else f" (folder {path.parent} does not exist either)"))
    data = path.read_bytes()
    if len(data) < 8:
        raise error(f"{kind} {path} is truncated: {len(data)} bytes, not a safetensors file")
    header_len = int.from_bytes(data[:8], "little")
    if 8 + header_len > len(data):
        raise error(f"{kind} {path} is truncated or not a safetensors file: header of {header_len} bytes "
                    f"announced, file has {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + header_len])
        tensors = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise error(f"{kind} {path} is corrupt or truncated: {exc}") from exc
    return tensors, header.get("__metadata__") or {}
