"""Atomic output: write under a temporary name in the target folder, then rename."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import OutputExistsError

__all__ = ["atomic_output"]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def atomic_output(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place.

    A crash or an exception inside ``write`` leaves nothing under the final name and
    no temporary file behind (except after a hard kill, when a hidden ``.*.partial-*``
    entry may remain; it is never mistaken for the output). An existing output is
    replaced only with ``overwrite=True``, and only once the new one is complete.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    token = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.partial-{token}")
    try:
        write(tmp)
    except BaseException:
        _remove(tmp)
        raise
    if path.exists():
        # os.replace cannot replace a non-empty folder (Zarr): move the old one aside first.
        old = path.with_name(f".{path.name}.old-{token}")
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)
    return path
