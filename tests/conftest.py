"""Shared fixtures: the project's ../shared data folder and its field cases."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path of ../shared (real files and field cases); skips where it is absent."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture
def field_case(shared: Path, tmp_path: Path):
    """Run a generator of ../shared/cases into tmp_path; return (folder, expected dict)."""

    def run(name: str) -> tuple[Path, dict]:
        (script,) = sorted((shared / "cases").glob(f"{name}*.py"))
        out = tmp_path / script.stem
        subprocess.run([sys.executable, str(script), str(out)], check=True, capture_output=True)
        return out, json.loads((out / "expected.json").read_text())

    return run


@pytest.fixture
def no_warnings():
    """Turn every warning into an error inside the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.fixture
def seg_file(tmp_path):
    """A small segmentation (cell with a nucleus, anisotropic voxels) written as OME-Zarr."""
    import numpy as np

    import sxtlab

    image = sxtlab.volume(np.full((16, 20, 24), 0.25, np.float32), voxel_size=(0.05, 0.03, 0.03))
    lab = np.zeros(image.shape, np.uint8)
    lab[4:12, 5:15, 6:18] = 1
    lab[6:10, 8:12, 9:15] = 2
    seg = sxtlab.segmentation(image, sxtlab.label_volume(lab, image, {1: "cell", 2: "nucleus"}))
    return sxtlab.write_volume(seg, tmp_path / "seg.ome.zarr")
