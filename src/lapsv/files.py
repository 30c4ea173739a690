"""Atomic file and directory writes: a killed process never leaves a half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lapsv.errors import LapsvError


class OutputError(LapsvError, OSError):
    """An output file or folder cannot be written; raised before any work starts."""


def check_writable_folder(folder: str | Path, *, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be created in it, or raise OutputError.

    Called before a command starts working, so that hours of work are never lost to a
    folder that cannot take the results.

    >>> import tempfile
    >>> check_writable_folder(Path(tempfile.mkdtemp()) / "new" / "results").is_dir()
    True
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".lapsv-write-check.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputError(f"{what} {folder} is not writable ({reason}); choose another") from error
    return folder


def check_writable_file(path: str | Path, *, what: str = "output file") -> Path:
    """Raise OutputError now if ``path`` could not be written atomically later."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    check_writable_folder(path.parent, what=f"folder of the {what}")
    return path


def _default_mode(*, directory: bool = False) -> int:
    """Permissions of a new file or folder under the process umask (mkstemp gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem supports fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, as UTF-8 (whatever the locale)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` as a whole on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(child, _default_mode())  # as every other output, whatever wrote it
        _fsync_directory(tmp)
        os.chmod(tmp, _default_mode(directory=True))
        backup = None
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, backup)
        os.replace(tmp, path)
        _fsync_directory(path.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_directory(path: str | Path) -> None:
    """Delete a folder so that it disappears at once: a kill never leaves half of it.

    It is renamed to a hidden name first (atomic), then deleted.
    """
    path = Path(path)
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    os.replace(path, doomed)
    _fsync_directory(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)
