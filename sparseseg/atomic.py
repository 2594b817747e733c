"""Whole-file writes that never leave a partial file under the final name.

Every file this package writes in one go (checkpoints, logs, reports, pages) goes to a
temporary file in the same folder, is flushed to disk, and is renamed over the target; a
crash, a full disk or a kill leaves either the old file or the new one, never a mix (the
temporary file is removed on any Python-level failure).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO

__all__ = ["temp_file", "write_atomic", "write_text"]


def temp_file(path: str | Path) -> tuple[int, str]:
    """Open a new empty temporary file next to ``path`` (hidden, ``.tmp`` suffix) with the
    permissions a plain new file would get (0666 less the umask, not mkstemp's 0600), so the
    renamed result is as readable as any other output. Returns ``(fd, temporary path)``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def write_atomic(path: str | Path, write: Callable[[IO], object], binary: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, fsync it, rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda fh: fh.write(text), binary=False)
