"""``cxraug downstream``: does adding synthetic images help a classifier on real held-out patients?

Two arms, trained with the same small CNN (:func:`~cxraug.evaluation.classifier.fit_classifier`),
the same seeds and the same real validation split for model selection:

* ``real``: the cache's real training split alone;
* ``real+synthetic``: the same real images plus the synthetic rows of augment's ``mixed.csv`` (or
  its ``Data_Entry_2017.csv``), resized to the cache's size and labelled from ``Finding Labels``
  by the project's one label reader.

Both are scored by per-class AUROC on the cache's real, patient-level TEST split. Synthetic images
only ever join the training arrays: never validation, never test (checked, not assumed). Reported:
mean +/- std over seeds per arm, the difference of the means, and the paired per-seed difference
(same seed, same real data, same initialization: the fairest single number).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import CxrError
from ..io_utils import write_json_atomic
from .classifier import (
    fit_classifier,
    mean_of,
    open_cache,
    per_class_auroc,
    predict_probs,
    read_split,
)

_TRUE = {"1", "true", "yes", "y", "t"}
#: Test images of a class needed before its AUROC is more than noise.
MIN_TEST_POSITIVES = 10
#: Bootstrap resamples of the test patients for the interval of the macro difference.
BOOTSTRAP = 1000


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in _TRUE


def load_synthetic(csv_path: Path, class_names: list[str], size: int,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Synthetic rows of an augment CSV -> uint8 images ``[N, size, size]``, multi-hot labels
    over ``class_names``, their ``Image Index`` names and counts of rows left out (and why).

    Rows are synthetic when ``Synthetic`` is 1/true; a CSV without that column (augment's
    ``Data_Entry_2017.csv``) is all synthetic. ``Path`` is resolved relative to the CSV's folder;
    without a ``Path`` column the image is looked up by name under that folder.
    """
    from PIL import Image, UnidentifiedImageError

    from ..data.labels import parse_findings, read_nih_csv
    from ..data.nih import FINDING_LABELS, IMAGE_INDEX
    from ..progress import progress_bar

    if not csv_path.is_file():
        raise CxrError(f"{csv_path}: synthetic CSV not found; pass augment's mixed.csv or "
                       "Data_Entry_2017.csv")
    frame = read_nih_csv(csv_path)
    if "Synthetic" in frame.columns:
        frame = frame[[_truthy(v) for v in frame["Synthetic"]]].reset_index(drop=True)
    if len(frame) == 0:
        raise CxrError(f"{csv_path}: no synthetic rows (Synthetic == 1); run `cxraug augment` "
                       "and pass its mixed.csv")
    findings = parse_findings(frame, csv_path)
    root = csv_path.parent
    by_name: dict[str, Path] | None = None
    skipped: dict[str, int] = {}
    images, hots, names = [], [], []
    col = {c: i for i, c in enumerate(class_names)}
    for row, labels in progress_bar(list(enumerate(findings)), desc="synthetic images", unit="img",
                            disable=not progress, leave=False):
        unknown = [lab for lab in labels if lab not in col]
        if unknown or not labels:
            key = f"label not a cache class ({'|'.join(sorted(unknown)) or 'empty'})"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        name = str(frame[IMAGE_INDEX].iat[row])
        if "Path" in frame.columns and str(frame["Path"].iat[row]) not in ("", "<NA>", "nan"):
            path = Path(str(frame["Path"].iat[row]))
            path = path if path.is_absolute() else root / path
        else:
            if by_name is None:
                by_name = {p.name: p for p in root.rglob("*.png")}
            path = by_name.get(name, root / name)
        try:
            with Image.open(path) as img:
                gray = img.convert("L")
                if gray.size != (size, size):
                    method = (Image.Resampling.BOX if gray.size[0] >= size
                              else Image.Resampling.BICUBIC)
                    gray = gray.resize((size, size), method)
                images.append(np.asarray(gray, dtype=np.uint8))
        except FileNotFoundError:
            raise CxrError(f"{csv_path}: row {row + 2} ({name}): image {path} not found; keep "
                           "the CSV beside the folder augment wrote") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise CxrError(f"{csv_path}: row {row + 2}: {path} is not a readable image "
                           f"({exc}); re-run `cxraug augment --resume`") from None
        hot = np.zeros(len(class_names), np.uint8)
        hot[[col[lab] for lab in labels]] = 1
        hots.append(hot)
        names.append(name)
    if not images:
        raise CxrError(f"{csv_path}: none of the synthetic rows carries a class of the cache "
                       f"({', '.join(class_names)}); {FINDING_LABELS} must use those names")
    return np.stack(images), np.stack(hots), names, skipped


def _stats(values: np.ndarray) -> dict[str, float | None]:
    vals = values[~np.isnan(values)]
    if not len(vals):
        return {"mean": None, "std": None}
    return {"mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}


@dataclass
class DownstreamResult:
    """Per-class test AUROC of both arms over seeds, and their difference."""

    out: Path | None
    result: dict[str, Any]

    def summary(self) -> str:
        r = self.result

        def pm(s: dict[str, float | None]) -> str:
            if s["mean"] is None:
                return "n/a"
            return f"{s['mean']:.3f} +/- {s['std']:.3f}"

        lines = [f"test AUROC on {r['n_test']} real held-out images ({r['seeds']} seeds, "
                 f"{r['epochs']} epochs; real train {r['n_real_train']}, synthetic "
                 f"{r['n_synthetic']})",
                 f"{'class':20s} {'real':>17s} {'real+synthetic':>17s} {'diff':>7s} "
                 f"{'paired diff':>17s}"]
        for name, c in list(r["classes"].items()) + [("macro mean", r["macro"])]:
            diff = c["difference"]
            lines.append(f"{name[:20]:20s} {pm(c['real']):>17s} {pm(c['real_plus_synthetic']):>17s}"
                         f" {'n/a' if diff is None else f'{diff:+.3f}':>7s} "
                         f"{pm(c['paired_difference']):>17s}")
        v = r["verdict"]
        lines.append(f"macro AUROC difference (real+synthetic - real): {v['difference']:+.3f}, "
                     f"95% interval {v['low']:+.3f} to {v['high']:+.3f} (bootstrap over "
                     f"{v['n_patients']} test patients, mean of {r['seeds']} seeds)")
        lines.append(f"verdict: {v['text']}")
        few = [f"{name} ({c['n_test_positive']})" for name, c in r["classes"].items()
               if c.get("note")]
        if few:
            lines.append(f"per-class AUROCs of classes with fewer than {MIN_TEST_POSITIVES} test "
                         f"positives are noise: {', '.join(few)}")
        if self.out is not None:
            lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def downstream(data: str | os.PathLike, synthetic: str | os.PathLike,
               out: str | os.PathLike | None = None, seeds: int = 3, epochs: int = 10,
               progress: bool = True) -> DownstreamResult:
    """Train real-only and real+synthetic classifiers over ``seeds`` and compare on real test."""
    started = time.time()
    data, synthetic = Path(data), Path(synthetic)
    if seeds < 1:
        raise CxrError(f"--seeds {seeds}: use at least 1 (3 or more to see the spread)")
    if epochs < 1:
        raise CxrError(f"--epochs {epochs}: use at least 1")
    with open_cache(data) as reader:
        class_names = list(reader.class_names)
        size = int(reader.size)
        multi_hot = np.asarray(reader.multi_hot)
        x_train, train_idx = read_split(reader, "train")
        x_val, val_idx = read_split(reader, "val")
        x_test, test_idx = read_split(reader, "test")
        test_patients = np.asarray(reader.patient_ids)[test_idx]
        heldout_names = set(np.asarray(reader.image_index)[np.concatenate([val_idx, test_idx])]
                            .astype(str).tolist())
        fingerprint = str(reader.fingerprint)
    if len(x_test) == 0:
        raise CxrError(f"{data}: the cache has no test images; re-run `cxraug prepare` with "
                       "--test-fraction above 0 (or --test-list)")
    if len(x_val) == 0:
        raise CxrError(f"{data}: the cache has no validation images; re-run `cxraug prepare` "
                       "with --val-fraction above 0")
    x_syn, y_syn, syn_names, skipped = load_synthetic(synthetic, class_names, size, progress)
    # synthetic images must never be (or pose as) held-out real images
    clash = heldout_names.intersection(syn_names)
    if clash:
        raise CxrError(f"{synthetic}: {len(clash)} synthetic rows share a name with real "
                       f"validation/test images (e.g. {sorted(clash)[0]}); regenerate them")
    y_train, y_val, y_test = multi_hot[train_idx], multi_hot[val_idx], multi_hot[test_idx]
    x_mix = np.concatenate([x_train, x_syn])
    y_mix = np.concatenate([y_train, y_syn])
    assert len(x_val) == len(val_idx) and len(x_test) == len(test_idx), \
        "validation/test arrays must hold real cache images only"

    arms = {"real": (x_train, y_train), "real_plus_synthetic": (x_mix, y_mix)}
    aucs: dict[str, np.ndarray] = {arm: np.full((seeds, len(class_names)), np.nan) for arm in arms}
    probs: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    runs: list[dict[str, Any]] = []
    for s in range(seeds):
        for arm, (x, y) in arms.items():
            fit = fit_classifier(x, y, x_val, y_val, epochs=epochs, seed=s, progress=progress,
                                 desc=f"{arm} seed {s}")
            test_probs = predict_probs(fit.model, x_test)
            probs[arm].append(test_probs)
            test_auc = per_class_auroc(y_test, test_probs)
            aucs[arm][s] = [np.nan if v is None else v for v in test_auc]
            runs.append({"seed": s, "arm": arm, "best_epoch": fit.best_epoch,
                         "val_auroc": dict(zip(class_names, fit.val_auroc, strict=True)),
                         "test_auroc": dict(zip(class_names, test_auc, strict=True))})

    def block(real: np.ndarray, mixed: np.ndarray) -> dict[str, Any]:
        r, m = _stats(real), _stats(mixed)
        diff = None if r["mean"] is None or m["mean"] is None else m["mean"] - r["mean"]
        return {"real": r, "real_plus_synthetic": m, "difference": diff,
                "paired_difference": _stats(mixed - real)}

    per_class = {}
    for c, name in enumerate(class_names):
        entry = block(aucs["real"][:, c], aucs["real_plus_synthetic"][:, c])
        entry["n_test_positive"] = int(y_test[:, c].sum())
        entry["n_synthetic"] = int(y_syn[:, c].sum())
        entry["n_real_train"] = int(y_train[:, c].sum())
        entry["note"] = (f"too few test positives (n={entry['n_test_positive']})"
                         if entry["n_test_positive"] < MIN_TEST_POSITIVES else None)
        per_class[name] = entry
    with np.errstate(all="ignore"):
        macro_real = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan
                               for row in aucs["real"]])
        macro_mix = np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan
                              for row in aucs["real_plus_synthetic"]])
    result = {
        "format": "cxraug-downstream-1", "cxraug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(data), "data_fingerprint": fingerprint, "synthetic_csv": str(synthetic),
        "seeds": seeds, "epochs": epochs, "n_real_train": int(len(x_train)),
        "n_synthetic": int(len(x_syn)), "n_val": int(len(x_val)), "n_test": int(len(x_test)),
        "synthetic_skipped": skipped, "metric": "per-class AUROC on the real test split",
        "classes": per_class, "macro": block(macro_real, macro_mix), "runs": runs,
        "verdict": verdict(y_test, np.mean(probs["real"], axis=0),
                           np.mean(probs["real_plus_synthetic"], axis=0), test_patients),
        "seconds": time.time() - started,
        "mean_test_auroc_real": mean_of(list(np.nanmean(aucs["real"], axis=0)))
        if np.isfinite(aucs["real"]).any() else None,
    }
    result = _json_safe(result)
    target = None
    if out is not None:
        target = Path(out) / "downstream.json"
        write_json_atomic(target, result)
    return DownstreamResult(out=target, result=result)


def _macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.nanmean([np.nan if v is None else v for v in per_class_auroc(y, p)]))


def verdict(y_test: np.ndarray, real: np.ndarray, mixed: np.ndarray, patients: np.ndarray,
            resamples: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Macro-AUROC difference of the two arms (their probabilities averaged over seeds) with a
    95% percentile interval from resampling test *patients* with replacement, and the verdict
    those numbers support: helped (interval above 0), hurt (below 0) or cannot tell."""
    rng = np.random.default_rng(seed)
    ids, rows = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(rows == i) for i in range(len(ids))]
    with np.errstate(all="ignore"):
        diff = _macro_auroc(y_test, mixed) - _macro_auroc(y_test, real)
        boots = []
        for _ in range(resamples):
            pick = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
            boots.append(_macro_auroc(y_test[pick], mixed[pick])
                         - _macro_auroc(y_test[pick], real[pick]))
    boots = np.asarray(boots)
    boots = boots[np.isfinite(boots)]
    low, high = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) \
        if len(boots) else (float("nan"), float("nan"))
    if low > 0:
        text = "helped: real+synthetic beat real alone on the test patients"
    elif high < 0:
        text = "hurt: real+synthetic did worse than real alone on the test patients"
    else:
        text = (f"cannot tell at this n ({len(ids)} test patients): the interval includes 0; "
                "use a larger test split or more seeds")
    return {"difference": diff, "low": low, "high": high, "n_patients": int(len(ids)),
            "resamples": int(len(boots)), "text": text}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
