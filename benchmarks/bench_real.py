"""Honest evaluation on real, sparsely annotated SXT data (issue 9, points 2 and 3).

The volume (default: NCXT's ``sample_12``, cells in a glass capillary, one cell
marked ``cell``, its neighbours ``void``, annotated on six planes per axis) is
split into folds of whole annotated planes with :func:`sxtlab.sparse.plane_folds`
(every third plane of each orientation held out; training labels within
``--margin`` voxels of a held-out plane removed, so no scored voxel lies next to a
training voxel). Every method is trained on a fold's training labels only and
scored on the held-out planes' annotated voxels:

``otsu``
    a global Otsu threshold of the whole volume (no training);
``rf``
    the ilastik approach (Berg et al. 2019): a random forest on
    :func:`skimage.feature.multiscale_basic_features`, trained on the same planes
    with :func:`skimage.future.fit_segmenter` (scikit-learn's
    ``RandomForestClassifier``; where scikit-learn is not installed, a small
    NumPy forest with the same settings, and the table says so);
``rf+select``
    the forest's foreground, keeping the instances the training annotation marks
    (:func:`sxtlab.sparse.select_annotated_instances`);
``interpolation``
    the annotation completed by random walks (:func:`sxtlab.sparse.interpolate_annotation`,
    Biomedisa's "smart interpolation"; no training, nothing to apply elsewhere);
``cascade``, ``cascade+select``
    :func:`sxtlab.sparse.fit_sparse` (two-stage cascade, ignore label) applied as
    is, and with the instance selection;
``cascade+interp+select``
    :func:`sxtlab.sparse.segment_sparse`'s default: the cascade's probabilities
    averaged with the interpolation, then the instance selection;
``default``
    the shipped default model (``sxtlab.models.load_model("default")``, trained on
    phantoms) applied as is, with a guessed calibration where the volume has none;
    reported as not available where there is no such model.

Metrics: Dice of ``cell`` on the held-out voxels (per fold, and pooled: the folds'
true/false positives and negatives added up), and boundary error with
:func:`sxtlab.metrics.boundary_error` in voxels (average symmetric surface distance
and 95th-percentile distance between the predicted and true boundaries on the
held-out planes). Times are wall and CPU seconds on this machine.

Run all folds (each fold can also run alone, e.g. in parallel, and the report is
built from the per-fold JSON files)::

    python benchmarks/bench_real.py --out benchmarks/results/real.md
    python benchmarks/bench_real.py --fold 0 --json-dir /tmp/real   # one fold
    python benchmarks/bench_real.py --report --json-dir /tmp/real --out benchmarks/results/real.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from pathlib import Path

import numpy as np
from timing import Clock  # a sibling module of the benchmarks

DEFAULT_PROJECT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ncxt" / "sample_12.hx"
METHODS = ("otsu", "rf", "rf+select", "interpolation", "cascade", "cascade+select", "cascade+interp+select",
           "default", "default+select")


# ---------------------------------------------------------------------------------
# Fallback forest (only where scikit-learn is missing)
# ---------------------------------------------------------------------------------
class HistRandomForest:
    """A random forest on quantile-binned features, NumPy only.

    Stands in for scikit-learn's ``RandomForestClassifier`` where that is not
    installed: bootstrap samples, ``sqrt(n_features)`` candidate features per
    split, Gini impurity, thresholds among ``n_bins`` quantiles of each feature
    (as histogram-based forests do), class probabilities averaged over trees. It has
    the ``fit``/``predict`` interface that :func:`skimage.future.fit_segmenter` needs.
    """

    def __init__(self, n_estimators: int = 100, max_depth: int = 12, min_samples_leaf: int = 5,
                 max_samples: float = 0.5, n_bins: int = 64, random_state: int = 0) -> None:
        self.n_estimators, self.max_depth, self.min_leaf = n_estimators, max_depth, min_samples_leaf
        self.max_samples, self.n_bins, self.random_state = max_samples, n_bins, random_state

    def _bin(self, X: np.ndarray) -> np.ndarray:
        return np.stack([np.searchsorted(e, X[:, j], side="right") for j, e in enumerate(self.edges_)],
                        axis=1).astype(np.uint8)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "HistRandomForest":
        rng = np.random.default_rng(self.random_state)
        self.classes_, yi = np.unique(y, return_inverse=True)
        k, (n, nf) = self.classes_.size, X.shape
        self.edges_ = [np.unique(np.quantile(X[:, j], np.linspace(0, 1, self.n_bins + 1)[1:-1])) for j in range(nf)]
        B = self._bin(X)
        mtry = max(1, int(np.sqrt(nf)))
        self.trees_ = []
        for _ in range(self.n_estimators):
            feat, thr, left, right, value = [-1], [0], [-1], [-1], [None]
            stack = [(0, rng.integers(0, n, max(1, int(self.max_samples * n))), 0)]
            while stack:
                node, ids, depth = stack.pop()
                counts = np.bincount(yi[ids], minlength=k)
                value[node] = counts / counts.sum()
                if depth >= self.max_depth or ids.size < 2 * self.min_leaf or counts.max() == ids.size:
                    continue
                parent = 1 - ((counts / ids.size) ** 2).sum()
                best_gain, best_j, best_b = 0.0, -1, -1
                for j in rng.choice(nf, mtry, replace=False):
                    h = np.bincount(B[ids, j].astype(np.int64) * k + yi[ids], minlength=self.n_bins * k)
                    cl = np.cumsum(h.reshape(-1, k), axis=0)[:-1]
                    nl = cl.sum(axis=1)
                    nr = ids.size - nl
                    gl = 1 - ((cl / np.maximum(nl, 1)[:, None]) ** 2).sum(axis=1)
                    gr = 1 - (((counts - cl) / np.maximum(nr, 1)[:, None]) ** 2).sum(axis=1)
                    gain = np.where((nl >= self.min_leaf) & (nr >= self.min_leaf),
                                    parent - (nl * gl + nr * gr) / ids.size, -1.0)
                    b = int(gain.argmax())
                    if gain[b] > best_gain:
                        best_gain, best_j, best_b = float(gain[b]), int(j), b
                if best_j < 0:
                    continue
                go_left = B[ids, best_j] <= best_b
                feat[node], thr[node], left[node], right[node] = best_j, best_b, len(feat), len(feat) + 1
                for _child in range(2):
                    feat.append(-1), thr.append(0), left.append(-1), right.append(-1), value.append(None)
                stack += [(left[node], ids[go_left], depth + 1), (right[node], ids[~go_left], depth + 1)]
            self.trees_.append((np.array(feat), np.array(thr), np.array(left), np.array(right), np.stack(value)))
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        B = self._bin(X)
        rows = np.arange(len(X))
        p = np.zeros((len(X), self.classes_.size))
        for feat, thr, left, right, value in self.trees_:
            node = np.zeros(len(X), np.int64)
            inner = feat[node] >= 0
            while inner.any():
                ni = node[inner]
                go = B[rows[inner], feat[ni]] <= thr[ni]
                node[inner] = np.where(go, left[ni], right[ni])
                inner = feat[node] >= 0
            p += value[node]
        return p / len(self.trees_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def random_forest(seed: int):
    """scikit-learn's forest if installed, else :class:`HistRandomForest`; and its name."""
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:
        return HistRandomForest(random_state=seed), "NumPy forest (scikit-learn not installed)"
    clf = RandomForestClassifier(n_estimators=100, max_depth=12, min_samples_leaf=5, max_samples=0.5,
                                 n_jobs=2, random_state=seed)
    return clf, "scikit-learn RandomForestClassifier"


# ---------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------
def score(pred: np.ndarray, truth: np.ndarray, test: np.ndarray) -> dict[str, float | int]:
    """Confusion counts, Dice and boundary error (voxels) of ``cell`` on the held-out voxels."""
    from sxtlab.metrics import boundary_error

    t = np.where(test, truth, 255).astype(np.uint8)
    p = pred.astype(np.uint8)
    tc, pc = t == 1, (p == 1) & test
    tp, fp, fn = int((tc & pc).sum()), int((~tc & pc).sum()), int((tc & ~pc).sum())
    b = boundary_error(p, t, 1, spacing=1.0)
    return {"tp": tp, "fp": fp, "fn": fn, "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "assd": b["assd"], "hd95": b["hd95"]}




# ---------------------------------------------------------------------------------
# One fold
# ---------------------------------------------------------------------------------
def run_fold(ds, fold, k: int, args, features: np.ndarray | None, feature_clock: Clock | None) -> dict:
    import xarray as xr
    from skimage.filters import threshold_otsu
    from skimage.future import fit_segmenter, predict_segmenter

    from sxtlab.sparse import fit_sparse, segment_sparse, select_annotated_instances, sparse_config

    lac = np.asarray(ds["lac"].values, np.float32)
    truth = np.asarray(ds["labels"].values)
    train = np.asarray(fold.train_labels.values)
    test = fold.test_mask
    out: dict = {"fold": k, "held_out": fold.held_out, "n_test": int(test.sum()),
                 "n_test_cell": int((truth[test] == 1).sum()), "n_train": int((train != 255).sum()),
                 "methods": {}}

    def record(name: str, pred: np.ndarray, clock: Clock, **extra) -> None:
        out["methods"][name] = {**score(pred, truth, test), "wall_s": clock.wall, "cpu_s": clock.cpu, **extra}
        m = out["methods"][name]
        print(f"fold {k} {name:<15} Dice {m['dice']:.3f}  ASSD {m['assd']:.2f}  "
              f"{m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU", flush=True)

    if "otsu" in args.methods:
        with Clock() as c:
            pred = lac > threshold_otsu(lac)
        record("otsu", pred, c)
    fold_ds = xr.Dataset({"lac": ds["lac"], "labels": fold.train_labels}, attrs=ds.attrs)
    if "rf" in args.methods or "rf+select" in args.methods:
        clf, rf_name = random_forest(args.seed)
        with Clock() as c:
            # fit_segmenter trains on labels ≥ 1 and treats 0 as unlabelled.
            clf = fit_segmenter(np.where(train == 255, 0, train.astype(np.int64) + 1), features, clf)
            rf = predict_segmenter(features, clf) == 2
        c.wall += feature_clock.wall
        c.cpu += feature_clock.cpu
        record("rf", rf, c, note=rf_name)
        if args.save_predictions:
            classes = list(clf.classes_)
            prob = clf.predict_proba(features.reshape(-1, features.shape[-1]))[:, classes.index(2)]
            np.save(Path(args.json_dir) / f"rf_prob_fold{k}.npy", prob.reshape(train.shape).astype(np.float32))
        if "rf+select" in args.methods:
            with Clock() as c2:
                sel = select_annotated_instances(rf, train)
            c2.wall, c2.cpu = c.wall + c2.wall, c.cpu + c2.cpu
            record("rf+select", sel, c2, note=rf_name)
    if "interpolation" in args.methods:
        with Clock() as c:
            seg = segment_sparse(fold_ds, None, select=False)
        record("interpolation", seg["labels"].values == 1, c)
    if any(m.startswith("cascade") for m in args.methods):
        cfg = sparse_config(iterations=tuple(args.iterations), seed=args.seed)
        with Clock() as c:
            model = fit_sparse(fold_ds, "cell", config=cfg)
        with Clock() as cp:
            seg = segment_sparse(fold_ds, model, interpolate=False, select=False)
        probs = seg["probabilities"].values[1]
        total = Clock()
        total.wall, total.cpu = c.wall + cp.wall, c.cpu + cp.cpu
        record("cascade", probs >= 0.5, total, train_wall_s=c.wall, train_cpu_s=c.cpu)
        with Clock() as cs:
            sel = select_annotated_instances(probs, train)
        cs.wall, cs.cpu = total.wall + cs.wall, total.cpu + cs.cpu
        record("cascade+select", sel, cs)
        with Clock() as cf:
            seg = segment_sparse(fold_ds, model)      # the default: model + interpolation + selection
        cf.wall, cf.cpu = c.wall + cf.wall, c.cpu + cf.cpu
        record("cascade+interp+select", seg["labels"].values == 1, cf, train_wall_s=c.wall, train_cpu_s=c.cpu)
        if args.save_predictions:
            np.save(Path(args.json_dir) / f"cascade_prob_fold{k}.npy", probs)
    if "default" in args.methods or "default+select" in args.methods:
        plain, chosen = default_model(ds, train, truth, test, args.model)
        out["methods"]["default"], out["methods"]["default+select"] = plain, chosen
        for name, m in (("default", plain), ("default+select", chosen)):
            if "dice" in m:
                print(f"fold {k} {name:<15} Dice {m['dice']:.3f}  ASSD {m['assd']:.2f}  "
                      f"{m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU", flush=True)
    return out


#: LAC (µm⁻¹) the annotated cell's median gray value is mapped to when the default
#: model meets an uncalibrated volume: mid-range of cytoplasm (0.2–0.3, DESIGN.md).
CYTOPLASM_LAC = 0.25


def default_model(ds, train: np.ndarray, truth: np.ndarray, test: np.ndarray,
                  model_name: str = "default") -> tuple[dict, dict]:
    """The shipped default model applied as is, and with the annotated cell's instance
    chosen among the capillary's cells (``default+select``); or why it cannot be.

    The default model wants LAC; an uncalibrated gray volume gets the calibration a
    new user would guess, ``LAC = gray · 0.25 / median(gray of the training cell
    voxels)`` (cell median → typical cytoplasm, zero → zero), and is segmented at
    the model's own voxel size (the volume has none, so nothing is resampled).
    """
    try:
        from sxtlab.models import load_model
        model = load_model(model_name)
    except (ImportError, FileNotFoundError) as e:
        return ({"unavailable": f"no shipped default model ({e})"},) * 2
    if "cell" not in model.classes:
        return ({"unavailable": f"the default model segments {model.classes}, not 'cell'"},) * 2
    import sxtlab

    image = ds["lac"]
    note = "applied as is"
    if image.attrs.get("units") == "gray" and image.sxt.calibration is None:
        median = float(np.median(np.asarray(image.values)[train == 1]))
        image = image.sxt.with_calibration(sxtlab.Calibration(scale=CYTOPLASM_LAC / median, offset=0.0))
        note = (f"uncalibrated volume: LAC = gray × {CYTOPLASM_LAC}/median(training cell gray); "
                f"model trained on phantoms at {model.voxel_size} µm")
    with Clock() as c, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the volume's voxel size is unknown")
        seg = model.predict(image, progress=False)
    value = 1 + model.classes.index("cell")
    pred = np.asarray(seg["labels"].values)
    # The default model labels organelles inside the cell with their own classes;
    # the cell is the union of its own label and everything within it.
    cell = pred != 0
    from sxtlab.sparse import select_annotated_instances

    # The annotated cell among the capillary's cells: the fold's training planes choose it.
    chosen = select_annotated_instances(cell, train)
    times = {"wall_s": c.wall, "cpu_s": c.cpu}
    return ({**score(cell, truth, test), **times, "note": note,
             "cell_label_only_dice": score(pred == value, truth, test)["dice"]},
            {**score(chosen, truth, test), **times})


# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------
def report(results: list[dict], args, machine: dict) -> str:
    results = sorted(results, key=lambda r: r["fold"])
    n = len(results)
    lines = [
        "# Held-out-plane evaluation on real sparse annotation (sample_12)",
        "",
        f"Volume: `{Path(args.project).name}`, {machine['shape']} voxels (z, y, x), uncalibrated gray, "
        "voxel size unknown; `cell` = the one annotated cell; its neighbours and the capillary are `void`. "
        f"Annotated planes: {machine['planes']}.",
        "",
        f"Protocol: {n} folds of whole planes (`sxtlab.sparse.plane_folds`: plane *i* of each orientation "
        f"held out in fold *i* mod {args.folds}); training labels within {args.margin} voxels of a held-out "
        "plane removed, so every scored voxel is ≥ "
        f"{args.margin + 1} voxels from any training label. Each method is trained on the fold's training "
        "labels only; scored on all annotated voxels of the held-out planes. Pooled Dice adds the folds' "
        "TP/FP/FN; boundary errors (voxels, `sxtlab.metrics.boundary_error`) are fold means. "
        f"Settings: cascade `sparse_config(iterations={tuple(args.iterations)})` (the run's value; see the "
        "notes on how it was reached), forest of 100 trees (depth ≤ 12) on skimage's default feature set, "
        "random-walk β chosen per fold on inner plane folds of that fold's training labels.",
        "",
        f"Machine: {machine['cpus']} CPU cores ({machine['platform']}), torch threads {machine['threads']}; "
        "other jobs shared the cores, so wall times are inflated: CPU seconds (all threads of the process) "
        "are the better measure of cost; an idle 2-core machine needs about CPU/2 to CPU wall seconds.",
        "",
        "| method | pooled Dice | Dice per fold | mean ± sd | ASSD (vox) | HD95 (vox) | wall s / fold | CPU s / fold |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for name in METHODS:
        rows = [r["methods"].get(name) for r in results]
        if all(r is None for r in rows):
            continue
        if any(r is not None and "unavailable" in r for r in rows):
            reason = next(r["unavailable"] for r in rows if r is not None and "unavailable" in r)
            lines.append(f"| {name} | n/a | | | | | | |")
            notes.append(f"`{name}`: {reason}.")
            continue
        rows = [r for r in rows if r is not None]
        tp, fp, fn = (sum(r[key] for r in rows) for key in ("tp", "fp", "fn"))
        d = np.array([r["dice"] for r in rows])
        per = ", ".join(f"{v:.3f}" for v in d)
        lines.append(
            f"| {name} | **{2 * tp / (2 * tp + fp + fn):.3f}** | {per} | {d.mean():.3f} ± {d.std(ddof=1) if d.size > 1 else 0:.3f} "
            f"| {np.nanmean([r['assd'] for r in rows]):.2f} | {np.nanmean([r['hd95'] for r in rows]):.2f} "
            f"| {np.mean([r['wall_s'] for r in rows]):.0f} | {np.mean([r['cpu_s'] for r in rows]):.0f} |")
        note = next((r.get("note") for r in rows if r.get("note")), None)
        if note and name == "rf":
            notes.append(f"`rf`: {note}; times include the features ({machine.get('feature_note', '')}).")
        elif note and name == "default":
            only = ", ".join(f"{r['cell_label_only_dice']:.3f}" for r in rows)
            notes.append(f"`default`: {note}; scored as cell = any non-background label "
                         f"(its `cell` label alone: Dice {only} per fold).")
    lines += ["", "Folds:", ""]
    for r in results:
        held = "; ".join(f"{d} {v}" for d, v in r["held_out"].items())
        lines.append(f"- fold {r['fold']}: held out {held}: {r['n_test']} voxels scored, "
                     f"{r['n_test_cell']} of them `cell`; {r['n_train']} training voxels.")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {x}" for x in notes]
    runs = sorted({c for r in results for c in r.get("commands", [r.get("command", "")])} - {""})
    if args.report:
        runs = runs or [f"python benchmarks/bench_real.py --fold K --threads 1 --json-dir DIR (K = "
                        f"{', '.join(str(r['fold']) for r in results)}, one process each, in parallel)"]
        runs.append(machine["command"])
    else:
        runs = [machine["command"]]
    lines += ["", "Commands:", ""] + [f"- `{c}`" for c in runs] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=str(DEFAULT_PROJECT), help="Amira project with sparse labels")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--margin", type=int, default=2)
    parser.add_argument("--fold", type=int, default=None, help="run only this fold (writes its JSON)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--iterations", type=int, nargs=2, default=(600, 600), help="cascade steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="model of the 'default' method: a name or folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json-dir", default=None, help="folder for per-fold JSON results")
    parser.add_argument("--report", action="store_true", help="only build the report from --json-dir")
    parser.add_argument("--save-predictions", action="store_true", help="save cascade probabilities (--json-dir)")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    args = parser.parse_args(argv)

    import torch

    import sxtlab
    from sxtlab.sparse import annotated_planes, plane_folds

    if args.threads:
        torch.set_num_threads(args.threads)
    json_dir = Path(args.json_dir) if args.json_dir else None
    if json_dir:
        json_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*voxel size unknown")
        ds = sxtlab.read_project(args.project)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(terse=True), "threads": torch.get_num_threads(),
               "shape": " × ".join(str(s) for s in ds["lac"].shape),
               "planes": "; ".join(f"{d} {v}" for d, v in annotated_planes(ds["labels"]).items()),
               "command": "python benchmarks/bench_real.py " + " ".join(argv if argv is not None else os.sys.argv[1:])}

    if args.report:
        if json_dir is None:
            parser.error("--report needs --json-dir")
        results = [json.loads(p.read_text()) for p in sorted(json_dir.glob("fold*.json"))]
        machine.update(results[0].get("machine", {}))
    else:
        folds = plane_folds(ds["labels"], args.folds, margin=args.margin)
        features, fclock = None, None
        if "rf" in args.methods or "rf+select" in args.methods:
            from skimage.feature import multiscale_basic_features

            # Unsupervised, so computed once for the volume and shared by the folds.
            with Clock() as fclock:
                features = multiscale_basic_features(np.asarray(ds["lac"].values, np.float32), sigma_min=0.5,
                                                     sigma_max=8)
            machine["feature_note"] = (f"{features.shape[-1]} multiscale features, σ 0.5–8, "
                                       f"{fclock.wall:.0f} s wall / {fclock.cpu:.0f} s CPU")
        todo = [args.fold] if args.fold is not None else range(args.folds)
        results = []
        for k in todo:
            r = run_fold(ds, folds[k], k, args, features, fclock)
            r["machine"] = {kk: machine[kk] for kk in ("threads", "feature_note") if kk in machine}
            r["command"] = machine["command"]
            results.append(r)
            if json_dir:
                path = json_dir / f"fold{k}.json"
                if path.exists():
                    # Re-running some methods updates their rows and keeps the others.
                    old = json.loads(path.read_text())
                    old["methods"].update(r["methods"])
                    old["machine"] = {**r["machine"], **old.get("machine", {})}
                    old["commands"] = [*old.get("commands", [old.get("command", "")]), r["command"]]
                    r = old
                path.write_text(json.dumps(r, indent=1))
        if args.fold is not None:
            return
    text = report(results, args, machine)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
