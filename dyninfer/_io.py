"""Atomic file writes shared by checkpoints, path files and deployment artefacts: a temporary
file in the target's folder, mode 0666 & ~umask (what a plain open() gives), fsync, os.replace,
then fsync of the folder, so a crash leaves either the old file or the complete new one."""
from __future__ import annotations

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
