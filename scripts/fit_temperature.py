"""Fit a model's output temperature on held-out validation cells and write it into its model.json.

    python scripts/fit_temperature.py --model sxtlab/models/default --work /tmp/default-run
    python scripts/fit_temperature.py --model DIR --work /tmp/run --seeds 101 102 103

Temperature scaling (Guo et al. 2017): one scalar ``T``, dividing stage 2's logits,
fitted by minimising the negative log-likelihood of the truth on cells the weights
were not trained on: by default the validation cells the model's training recorded
(``info.trained_on.validation_seeds``, made as ``scripts/train_default_model.py``
makes them and cached in ``--work/cells``). Labels do not change; the weights and
their checksum stay as they are. Check the result on other held-out cells with
``benchmarks/bench_calibration.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sxtlab.metrics import fit_temperature, temper
from sxtlab.models import load_model
from sxtlab.task import Task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_default_model import VALIDATION_SEEDS, make_cell  # noqa: E402


def _nll(probabilities: list[np.ndarray], truths: list[np.ndarray]) -> float:
    """Mean negative log-likelihood of the truth over all voxels of the cells."""
    total = sum(-np.log(np.maximum(np.take_along_axis(p, t[None].astype(np.int64), 0), 1e-30)).sum()
                for p, t in zip(probabilities, truths))
    return float(total / sum(t.size for t in truths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (its model.json is rewritten)")
    parser.add_argument("--work", type=Path, required=True, help="cache of cells (as train_default_model.py's)")
    parser.add_argument("--seeds", type=int, nargs="*", help="validation cells (default: those the model recorded)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    seeds = args.seeds or model.info.get("trained_on", {}).get("validation_seeds") or VALIDATION_SEEDS
    trained = set(model.info.get("trained_on", {}).get("seeds", []))
    if trained & set(seeds):
        parser.error(f"cells {sorted(trained & set(seeds))} were trained on; fit on held-out cells")
    task = Task(model.classes)
    probabilities, truths = [], []
    for seed in tqdm(seeds, desc="validation cells"):
        cell = make_cell(seed, args.work / "cells")
        seg = model.predict(cell["lac"], progress=False)
        probabilities.append(seg["probabilities"].values)
        truths.append(task.remap(cell["labels"]).values)
    model.temperature = 1.0
    before = _nll(probabilities, truths)
    t = fit_temperature(probabilities, truths)
    after = _nll([temper(p, t) for p in probabilities], truths)
    model.temperature = t
    model.info["temperature"] = {"fitted_on": {"generator": "sxtlab.phantom.varied_cell", "seeds": list(seeds)},
                                 "nll_before": round(before, 5), "nll_after": round(after, 5),
                                 "method": "temperature scaling (Guo et al. 2017), NLL minimised"}
    # only model.json changes: the weights (and their checksum), the model card and the
    # training history beside them stay
    meta_path = args.model / "model.json"
    meta = {**model.metadata(), "weights": json.loads(meta_path.read_text())["weights"]}
    tmp = meta_path.with_name(".model.json.partial")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(meta_path)
    load_model(args.model)  # reads back
    print(json.dumps({"temperature": round(t, 4), **model.info["temperature"]}, indent=1))


if __name__ == "__main__":
    main()
