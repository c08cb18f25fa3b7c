"""Atomic file writes: a crash or error mid-write leaves the previous file intact, and the new
file gets the mode of any new file (0644 under umask 022), not mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            set_default_mode(tmp)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def set_default_mode(path: str | os.PathLike) -> None:
    """Give `path` the mode that open() and mkdir() give a new file or folder, as diffusers'
    saves have them: 0o666 or 0o777 less the umask (0644 and 0755 under umask 022), where a
    temporary file (mkstemp, safetensors) or folder (mkdtemp) starts owner-only."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask())


def umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux 4.7+,
    /proc/self/status); elsewhere the one read when this module was imported."""
    now = _proc_umask()
    return _UMASK_AT_IMPORT if now is None else now


def _proc_umask() -> int | None:
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    match = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    return int(match.group(1), 8) if match else None


# os.umask reads the umask only by setting it, which races with threads that create files
# meanwhile: where /proc does not show it, it is read so once, now, at import.
_UMASK_AT_IMPORT = _proc_umask()
if _UMASK_AT_IMPORT is None:
    _UMASK_AT_IMPORT = os.umask(0o022)
    os.umask(_UMASK_AT_IMPORT)
