"""README.md's examples, run as written, so that an example that stops working fails CI.

Every ```bash and ```python block is extracted from the README. Shell lines run
through :func:`sxtlab.cli.main` (in this process: no interpreter start per line),
one after the other in a folder that holds tiny stand-ins for the files they name
(``tomo.mrc``, ``cell.hx``, ``sample_12.hx``, made or copied on the fly). What
cannot run here is listed below with its reason: whole lines skipped, and the few
texts replaced or arguments added to keep the run within seconds.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

import sxtlab
from sxtlab import phantom
from sxtlab.catalog import Catalog
from sxtlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: Shell lines (as they start) that do not run here, and why.
SKIPPED = {
    "python3 -m venv .venv": "creates an environment and installs packages (what .ci/run does); its "
                             "`sxtlab demo` runs in tests/test_cli.py at a small --size",
    'python -m pip install torch==2.13.0 && python -m pip install -e ".[test]" && python -m pytest':
        "the test command itself, which .ci/run runs (test_ci_runs_the_readme_test_command)",
}
#: Text of an example replaced here: (README text, text run, why).
REPLACED = [
    ("/archive/amira", "archive", "a folder with one tiny phantom project stands in for the user's archive"),
    ("shape=(96, 96, 96)", "shape=(48, 48, 48)", "a 48³ phantom: 8× fewer voxels to simulate and segment"),
]
#: Arguments added to commands that start so: (prefix, arguments, why).
ADDED = [
    ("sxtlab train", ["--iterations", "2", "2"], "two steps per stage: the command is under test, not the model"),
    ("sxtlab segment sample_12.hx", ["--beta", "1000"], "one random walk instead of the 13 that choose β"),
]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _replaced(text: str) -> str:
    for old, new, _ in REPLACED:
        text = text.replace(old, new)
    return text


def _commands() -> list[str]:
    lines = [line.strip() for block in _blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _write_project(path: Path, seed: int) -> None:
    """A small phantom cell as an Amira project: image, labels and the .hx that pairs them."""
    ds = phantom.cell(seed=seed, shape=(32, 32, 32), voxel_size=0.05)
    files = path.with_name(f"{path.stem}-files")
    files.mkdir(parents=True)
    sxtlab.write_volume(ds["lac"], files / "image.am")
    sxtlab.write_volume(ds["labels"], files / "image.labels")
    path.write_text("# Amira Project 630\n# Amira\n"
                    f"[ load ${{SCRIPTDIR}}/{files.name}/image.am ] setLabel image.am\n"
                    f"[ load ${{SCRIPTDIR}}/{files.name}/image.labels ] setLabel image.labels\n"
                    "image.labels ImageData connect image.am\n")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with the files the examples name; the working directory during the test."""
    with mrcfile.new(tmp_path / "tomo.mrc") as m:  # LAC, no voxel size in the header
        m.set_data(phantom.cell(seed=2, shape=(48, 48, 48), voxel_size=0.032)["lac"].values.astype(np.float32))
    _write_project(tmp_path / "cell.hx", seed=3)
    _write_project(tmp_path / "archive" / "other.hx", seed=5)
    sample = sxtlab.data.ncxt_sample_12_path()
    shutil.copy(sample, tmp_path / "sample_12.hx")
    shutil.copytree(sample.parent / "sample_12-files", tmp_path / "sample_12-files")
    (tmp_path / "recs").mkdir()  # two cells of two conditions for `sxtlab study`
    for seed, condition in ((6, "control"), (8, "treated")):
        cell = phantom.cell(seed=seed, shape=(48, 48, 48), voxel_size=0.05, acquisition=True)
        sxtlab.write_volume(cell["lac"], tmp_path / "recs" / f"{condition}.mrc")
    (tmp_path / "cells.csv").write_text("file,condition\ncontrol.mrc,control\ntreated.mrc,treated\n")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # the CLI chooses torch's threads for its process
    yield tmp_path
    torch.set_num_threads(threads)


def test_the_readme_has_the_examples_this_test_runs():
    commands = _commands()
    assert len(_blocks("python")) == 1 and len(commands) == 16
    assert all(any(c.startswith(s) for c in commands) for s in SKIPPED)
    assert all(old in README for old, _, _ in REPLACED)


def test_shell_examples_run(workspace, capsys):
    ran = []
    for line in _commands():
        if any(line.startswith(s) for s in SKIPPED):
            continue
        argv = shlex.split(_replaced(line), comments=True)
        assert argv[0] == "sxtlab", line
        argv += [arg for prefix, args, _ in ADDED if line.startswith(prefix) for arg in args]
        code = main(argv[1:])
        assert code == 0, f"{line!r} exited {code}: {capsys.readouterr().err.strip().splitlines()[-1:]}"
        ran.append(argv[1])
    assert ran == ["info", "segment", "segment", "measure", "catalog", "catalog", "catalog", "train", "train",
                   "segment", "model", "model", "study", "compare"]
    assert (workspace / "task-model-bioimageio" / "stage2" / "rdf.yaml").is_file()
    assert (workspace / "STUDY" / "compare-condition-unflagged" / "comparison.csv").is_file()
    assert len(Catalog.open("refs.catalog")) == 2  # cell.hx and the archive's project
    assert sxtlab.read_segmentation("sample_12-seg.zarr")["labels"].attrs["classes"] == {"1": "cell"}


def test_python_example_runs(workspace):
    (block,) = _blocks("python")
    namespace: dict = {}
    with pytest.warns(sxtlab.SxtlabWarning, match="sample_12.rec: voxel size unknown"):  # as the README has it
        exec(compile(_replaced(block), "README.md", "exec"), namespace)
    assert namespace["table"]["volume_um3"].gt(0).all()
    assert namespace["raw"].sxt.voxel_size == (0.032, 0.032, 0.032)
    assert (workspace / "cell.ome.zarr").is_dir()


def test_ci_runs_the_readme_test_command():
    (command,) = [c for c in _commands() if "pytest" in c]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[ci.index("# README test command (keep identical to README.md):") + 1] == command
