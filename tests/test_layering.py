"""Imports flow one way, from the vocabulary up to the commands.

A lower module never imports a higher one, not even inside a function: prediction
works without the trainer, the catalog without tasks, volumes without viewers. The
cascade's prediction sits below its trainer (``train`` builds a ``CascadeModel``).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sxtlab"

#: Rank of each module; a module may import modules of its own rank or lower.
#: ``task`` ranks above ``catalog``: a task selects catalog entries, a catalog knows no task.
RANKS = {
    "errors": 0, "classes": 0, "calibration": 0, "volume": 0, "metrics": 0, "_figure": 0, "domain": 0,
    "io": 1,
    "phantom": 2, "acquisition": 2, "data": 2,
    "unet": 3, "inference": 3, "clean": 3, "threads": 3,
    "cascade": 4, "_modelfile": 4, "models": 4,
    "train": 5,
    "catalog": 6, "task": 6.5,
    "sparse": 7, "cells": 7, "measure": 7, "stats": 7, "plot": 7, "viewer": 7, "qc": 7,
    "study": 8, "cli": 8, "demo": 8, "napari": 8, "_napari": 8, "export": 8,
}


def _module_name(path: Path) -> str:
    """Top-level sxtlab module a file belongs to (``io/_mrc.py`` -> ``io``)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported(source: str, package: tuple[str, ...] = ()) -> set[str]:
    """Top-level sxtlab modules that ``source`` imports, at any depth of its code.

    ``package`` is the sub-package the source lives in (``("io",)`` for ``io/_mrc.py``),
    against which relative imports resolve.
    """
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("sxtlab.") and a.name.count(".") >= 1)
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".") if node.module else []
            if node.level == 0:
                if module[:1] != ["sxtlab"]:
                    continue
                resolved = module[1:]
            else:
                resolved = list(package[:len(package) - (node.level - 1)]) + module
            out.update(resolved[:1] or [a.name for a in node.names])
    return out


def _package(path: Path) -> tuple[str, ...]:
    return path.relative_to(PACKAGE).parent.parts


FILES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_rank():
    modules = {_module_name(p) for p in FILES}
    assert modules <= set(RANKS), f"give these modules a rank: {sorted(modules - set(RANKS))}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_one(path):
    own = _module_name(path)
    upward = {m for m in _imported(path.read_text(encoding="utf-8"), _package(path)) if m in RANKS and RANKS[m] > RANKS[own]}
    assert not upward, f"{path.relative_to(PACKAGE)} (rank {RANKS[own]}) imports higher modules {sorted(upward)}"


def test_the_checker_sees_every_kind_of_import():
    source = ("import sxtlab.cli\nfrom sxtlab.train import x\nfrom . import task\n"
              "def f():\n    from .viewer import show_slices\n")
    assert _imported(source) == {"cli", "train", "task", "viewer"}
    assert _imported("from . import _common\nfrom ..volume import v\n", ("io",)) == {"io", "volume"}
