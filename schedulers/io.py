"""Atomic file writes: a crash or error mid-write leaves the previous file intact, and the new
file gets the mode of any new file (0644 under umask 022), not mkstemp's owner-only 0600."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a temporary file beside `path`, make it durable, then move it into
    place with `os.replace`: whatever interrupts it, `path` holds the old file or the new
    one, never a torn write, with the mode of a new file (`set_default_mode`). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        set_default_mode(tmp)  # mkstemp makes it 0600
        fsync_file(tmp)
        os.replace(tmp, path)  # same folder, same file system: atomic
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """`write_file_atomically` of UTF-8 text."""
    return write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def fsync_file(path: str | os.PathLike) -> None:
    """Make a written file's bytes durable (before it is renamed into place)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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
