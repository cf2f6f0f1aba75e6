"""Atomic file writes: a killed run never leaves a half-written file that looks whole.

`tempfile.mkstemp` / `mkdtemp` create 0600 / 0700 whatever the umask; renamed into place, that
made every output private to its owner (a TF Serving container running as another user could
not read RUN/export). Everything here gets the mode an ordinary ``open(path, "w")`` /
``mkdir`` under the current umask would give instead.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (else set and restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_mode(directory: bool = False) -> int:
    """0o666 (files) or 0o777 (folders) less the umask: what open() or mkdir() would give."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """`tempfile.mkdtemp` in `parent` with the ordinary folder mode (not mkdtemp's 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, ordinary_mode(directory=True))
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), ordinary_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
