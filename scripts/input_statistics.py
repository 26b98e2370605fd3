"""Record the training cells' input statistics in a model that predates them.

    python scripts/input_statistics.py sxtlab/models/default            # adds info.input_statistics
    python scripts/input_statistics.py MODEL --work /tmp/cells           # varied cells: cache folder

``sxtlab.train.train_cascade`` records ``info["input_statistics"]`` (the range of
:func:`sxtlab.domain.input_statistics` over the training cells) in every model it
trains; a model trained before that can get it here, where its ``model.json``
records how its training cells were made (``info["trained_on"]``):

* ``"generator": "sxtlab.phantom"``: ``phantom.cell`` with the recorded seeds,
  shape, voxel size and acquisitions (cycled over the seeds, as the script that
  trained the first shipped default did);
* ``"generator": "sxtlab.phantom.varied_cell"``: ``make_cell`` of
  ``scripts/train_default_model.py`` (cached under ``--work``).

Only ``model.json`` changes (written atomically); the weights and their checksum stay.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from sxtlab import phantom
from sxtlab.domain import input_statistics, reference_range
from sxtlab.io import atomic_output


def training_cells(info: dict, work: Path | None):
    trained = info.get("trained_on")
    if not isinstance(trained, dict):
        raise SystemExit(f"the model records no generator of its training cells (trained_on: {trained!r})")
    generator = trained.get("generator")
    if generator == "sxtlab.phantom":
        acquisitions = trained["acquisitions"]
        for i, seed in enumerate(trained["seeds"]):
            acq = phantom.Acquisition(**acquisitions[i % len(acquisitions)], seed=seed)
            yield phantom.cell(seed=seed, shape=trained["shape"], voxel_size=trained["voxel_size_um"],
                               acquisition=acq)
    elif generator == "sxtlab.phantom.varied_cell":
        if work is None:
            raise SystemExit("varied training cells are cached: give --work FOLDER")
        sys.path.insert(0, str(Path(__file__).parent))
        from train_default_model import make_cell

        for seed in trained["seeds"]:
            yield make_cell(seed, work / "cells")
    else:
        raise SystemExit(f"unknown generator {generator!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model folder (model.json, weights.safetensors)")
    parser.add_argument("--work", type=Path, help="cache of varied training cells")
    args = parser.parse_args()
    meta_path = args.model / "model.json"
    meta = json.loads(meta_path.read_text())
    info = meta.setdefault("info", {})
    cells = training_cells(info, args.work)
    stats = [input_statistics(ds["lac"]) for ds in tqdm(cells, desc="training cells")]
    info["input_statistics"] = reference_range(stats)
    text = json.dumps(meta, indent=1)
    atomic_output(meta_path, lambda tmp: tmp.write_text(text), overwrite=True)
    print(json.dumps(info["input_statistics"], indent=1))


if __name__ == "__main__":
    main()
