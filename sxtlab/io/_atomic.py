"""Atomic output: exclusive creation, one-step replacement, and recovery from killed writes.

Every output ``NAME`` is written under a hidden temporary name beside it and moved
into place only once complete. While writing, a process holds an exclusive lock on
``.NAME.lock`` (``fcntl.flock``, which the kernel releases when the process dies, even
by ``kill -9``), so writers of one output take turns and everything a killed writer
left behind is known to be dead when the next one holds the lock:

``.NAME.partial-TOKEN``
    being written; a leftover is incomplete and removed.
``.NAME.ready-TOKEN``
    complete, about to replace a folder (Zarr, a model): a folder cannot be replaced
    in one step, so the old one is first moved to
``.NAME.old-TOKEN``
    the previous output. A writer killed between the two renames leaves ``NAME``
    missing; the next write completes the swap (the new output was complete) and
    removes the old one.

A file replaces a file in one step (``os.replace``). A new output is created without
ever replacing one that appeared meanwhile: a file by ``os.link`` (which fails if the
name exists), a folder by ``os.rename`` onto a name that the lock keeps free.

Where ``fcntl`` is missing (Windows), the lock is a file created with ``O_EXCL``: a
second writer is refused, naming the lock file, which a killed writer leaves behind
for the user to remove.
"""

from __future__ import annotations

import os
import re
import errno
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputExistsError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_output", "leftovers"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def leftovers(path: str | os.PathLike) -> dict[str, list[Path]]:
    """Entries that writes of ``path`` left behind: ``{"partial": [...], "ready": [...], "old": [...]}``."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(partial|ready|old)-[0-9a-f]+")
    found: dict[str, list[Path]] = {"partial": [], "ready": [], "old": []}
    if path.parent.is_dir():
        for entry in sorted(path.parent.iterdir()):
            m = pattern.fullmatch(entry.name)
            if m:
                found[m.group(1)].append(entry)
    return found


def _recover(path: Path) -> None:
    """Complete or roll back what killed writes of ``path`` left; called holding its lock."""
    left = leftovers(path)
    if not (path.exists() or path.is_symlink()) and left["ready"]:
        # killed between moving the old output aside and moving the new one in: the new
        # one was complete, so the swap is completed
        os.rename(left["ready"][-1], path)
        left["ready"].pop()
    elif not (path.exists() or path.is_symlink()) and left["old"]:
        os.rename(left["old"][-1], path)  # no complete new output: the old one comes back
        left["old"].pop()
    for entry in (*left["partial"], *left["ready"], *left["old"]):
        _remove(entry)


class _Lock:
    """Exclusive lock of one output's writers: ``.NAME.lock``, removed when released."""

    def __init__(self, path: Path) -> None:
        self.file = path.with_name(f".{path.name}.lock")
        self.fd: int | None = None

    def __enter__(self) -> "_Lock":
        if fcntl is None:
            try:
                self.fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                raise OutputExistsError(
                    f"{self.file.with_name(self.file.name[1:-5])} is being written by another process (lock "
                    f"{self.file}); if no other process writes it, remove the lock file") from None
            return self
        while True:
            fd = os.open(self.file, os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder before us may have removed the file after we opened it: then we hold
            # the lock of a name nobody else sees, and must lock the file now under that name.
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        assert self.fd is not None
        try:
            self.file.unlink()  # before unlocking, so that a waiter sees it is gone (above)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def atomic_output(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then move it into place.

    ``write`` may create a file or a folder at ``tmp``. An exception inside it (or a
    kill) leaves nothing under the final name; the next write of ``path`` removes what
    a killed one left (see the module notes). Writers of one ``path`` take turns.

    Parameters
    ----------
    path : path-like
        The output.
    write : callable
        Writes the output to the path it is given.
    overwrite : bool
        Replace an existing output (only once the new one is complete: a file in one
        step, a folder by two renames that the next write completes if interrupted).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    OutputExistsError
        If ``path`` exists (or appears while writing, created by another process) and
        ``overwrite`` is false.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    exists = f"{path} exists; pass overwrite=True (or --overwrite) to replace it"
    if path.exists() and not overwrite:
        raise OutputExistsError(exists)  # before waiting for a lock or writing anything
    with _Lock(path):
        _recover(path)
        if path.exists() and not overwrite:
            raise OutputExistsError(exists)
        token = f"{os.getpid():x}{uuid.uuid4().hex[:8]}"
        tmp = path.with_name(f".{path.name}.partial-{token}")
        try:
            write(tmp)
        except BaseException:
            _remove(tmp)
            raise
        if not overwrite or not (path.exists() or path.is_symlink()):
            _create(tmp, path, exists)
        elif tmp.is_dir() or path.is_dir():
            ready = path.with_name(f".{path.name}.ready-{token}")
            old = path.with_name(f".{path.name}.old-{token}")
            os.rename(tmp, ready)
            os.rename(path, old)
            os.rename(ready, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    return path


def _create(tmp: Path, path: Path, exists: str) -> None:
    """Move ``tmp`` to the new name ``path`` without replacing anything that appeared there."""
    try:
        if tmp.is_dir():
            os.rename(tmp, path)  # fails on a non-empty folder; the lock keeps sxtlab's writers out
            return
        try:
            os.link(tmp, path)  # fails if the name exists, whoever created it
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(tmp, path)  # a file system without hard links: the lock still excludes sxtlab's writers
            return
        tmp.unlink()
    except OSError as err:
        if isinstance(err, (FileExistsError, IsADirectoryError, NotADirectoryError)) or err.errno == errno.ENOTEMPTY:
            _remove(tmp)
            raise OutputExistsError(f"{exists} (it appeared while writing)") from err
        raise
