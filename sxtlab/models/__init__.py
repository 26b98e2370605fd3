"""Models shipped with sxtlab, and loading a model by name or path.

``default`` is a cascade trained on phantom cells (see ``default/MODEL_CARD.md`` and
``scripts/train_default_model.py``, which retrains it). Real reconstructions need a
model trained for their task (:class:`sxtlab.task.Task`).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["load_model", "model_path", "SHIPPED"]

#: Names of the models that ship with the package.
SHIPPED = ("default",)


def model_path(name: str) -> Path:
    """Folder of a shipped model.

    Raises
    ------
    FileNotFoundError
        If no model of that name ships with this installation.
    """
    path = Path(str(files(__name__) / name))
    if name not in SHIPPED or not (path / "model.json").is_file():
        raise FileNotFoundError(f"no shipped model named {name!r}; shipped models: {', '.join(SHIPPED)}")
    return path


def load_model(name_or_path: str | os.PathLike = "default", **kwargs):
    """Load a shipped model by name, or a saved :class:`~sxtlab.cascade.CascadeModel` by path.

    Parameters
    ----------
    name_or_path : str or path-like
        ``"default"``, or a folder written by ``CascadeModel.save``.
    **kwargs
        Passed to :meth:`sxtlab.cascade.CascadeModel.load` (e.g. ``classes=``).

    Examples
    --------
    >>> model = load_model("default")  # doctest: +SKIP
    >>> model.classes  # doctest: +SKIP
    ['cell', 'nucleus', 'mitochondria', 'lipid_body', 'vacuole']
    """
    from ..cascade import CascadeModel

    key = os.fspath(name_or_path)
    path = model_path(key) if key in SHIPPED else Path(key)
    return CascadeModel.load(path, **kwargs)
