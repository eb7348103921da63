"""``cxraug downstream``: which way of adding synthetic images helps a classifier on real patients?

Every arm trains the same classifier recipe (:class:`~.mixing.ClassifierRecipe`: the same number of
optimizer steps, the same seeds and initial weights) on a different mix (:mod:`.mixing`), and is
scored by per-class AUROC on real **test** patients: the cache's test split plus every
``--test-data`` cache (other patients only; checked). The arms (``--strategy``, see
:data:`STRATEGIES`):

* ``real``: the real training patients alone, the baseline every other arm is compared with;
* ``ceiling``: a "perfect generator": the same real images plus real images of other patients in
  place of synthetic ones. To have those, a share of the training patients (``holdback``) is held
  back from *every* arm and only the ceiling gets them back, so each verdict is read beside what
  more real data gives;
* ``all``, ``share-S``, ``weight-W``, ``rare``, ``pretrain``, ``judge``: ways to mix the synthetic
  rows of augment's ``mixed.csv`` in (described in :data:`STRATEGIES`).

Synthetic images only ever join training pools: never test (checked, not assumed). Each arm's
test probabilities are averaged over seeds and compared with ``real``'s by the macro-AUROC
difference with a 95% interval from resampling test *patients* (the same resamples for every
arm), per class where the test split has enough positives; its verdict is helped / hurt / cannot
tell, and a synthetic arm's gain is also given as a share of the ceiling's.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import CxrError
from ..io_utils import write_json_atomic
from .classifier import open_cache, per_class_auroc, predict_probs, read_split
from .mixing import ClassifierRecipe, MixFit, Pool, fit_mix

_TRUE = {"1", "true", "yes", "y", "t"}
#: Test images of a class needed before its AUROC is more than noise.
MIN_TEST_POSITIVES = 10
#: Bootstrap resamples of the test patients for every interval.
BOOTSTRAP = 1000
#: The recommended mix must not cost more than this much macro AUROC at the interval's low end.
NEVER_HURTS = -0.02
#: Share of the training patients held back for the ceiling arm.
HOLDBACK = 1 / 3

#: What each strategy name means (``share-S`` and ``weight-W`` take a number).
STRATEGIES = {
    "real": "real training images alone (the baseline)",
    "ceiling": "real + real images of held-back patients in place of synthetic ones (the ceiling)",
    "all": "real + every synthetic image, each image equally likely in a batch",
    "share-S": "real + synthetic, a fixed share S of every batch synthetic (e.g. share-0.25)",
    "weight-W": "real + every synthetic image at loss weight W (e.g. weight-0.3)",
    "rare": "real + synthetic images of rare classes only, topping each up to the count of the "
            "most common pathology",
    "pretrain": "train on synthetic images alone, then fine-tune on real ones (half the steps "
                "each)",
    "judge": "share-0.25 of the synthetic images that the real-only classifier of the same seed "
             "rates above the median of real images without the label (for each of their labels)",
}
DEFAULT_STRATEGIES = ("real", "ceiling", "all", "share-0.25", "share-0.5", "weight-0.3", "rare",
                      "pretrain", "judge")
#: The way to try first: the closest to a gain on real NIH test patients with the shipped
#: generator (docs/BENCHMARKS.md, "downstream"), though no way measured a significant one.
RECOMMENDED = "share-0.5"
#: The share of a batch given to synthetic images by ``judge``.
JUDGE_SHARE = 0.25


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


# ------------------------------------------------------------------------------- strategies
@dataclass(frozen=True)
class Strategy:
    """One arm: which images it adds to the real ones and how."""

    name: str
    kind: str                   # real | ceiling | all | share | weight | rare | pretrain | judge
    value: float | None = None  # the S of share-S, the W of weight-W

    @property
    def synthetic(self) -> bool:
        return self.kind not in ("real", "ceiling")

    @property
    def description(self) -> str:
        if self.value is None:
            return STRATEGIES[self.name]
        letter = "S" if self.kind == "share" else "W"
        return STRATEGIES[f"{self.kind}-{letter}"].replace(f" {letter} ", f" {self.value:g} ")


def parse_strategy(text: str) -> Strategy:
    """``"share-0.25"`` -> Strategy; a one-line error naming the choices otherwise."""
    name = text.strip().lower()
    choices = ", ".join(STRATEGIES)
    match = re.fullmatch(r"(share|weight)-([0-9]*\.?[0-9]+)", name)
    if match:
        value = float(match.group(2))
        if match.group(1) == "share" and not 0 < value < 1:
            raise CxrError(f"--strategy {text}: the share must be between 0 and 1 "
                           "(e.g. share-0.25)")
        if match.group(1) == "weight" and not 0 < value <= 1:
            raise CxrError(f"--strategy {text}: the weight must be in (0, 1] (e.g. weight-0.3)")
        return Strategy(name, match.group(1), value)
    if name in STRATEGIES and "-" not in name:
        return Strategy(name, name)
    raise CxrError(f"--strategy {text}: unknown; choose from {choices}")


def parse_strategies(texts: list[str] | tuple[str, ...]) -> list[Strategy]:
    """Comma-separated or repeated names, ``real`` first (every arm is compared with it)."""
    names = [t for text in texts for t in str(text).split(",") if t.strip()]
    out: list[Strategy] = []
    for strategy in (parse_strategy(n) for n in ["real", *names]):
        if strategy.name not in {s.name for s in out}:
            out.append(strategy)
    return out


@dataclass
class Split:
    """Real images with labels and patient IDs."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def take(self, mask: np.ndarray) -> Split:
        return Split(self.images[mask], self.labels[mask], self.patients[mask])


def hold_back(train: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """Training patients -> (base, extra): ``fraction`` of the patients (all their images) go to
    ``extra``, the ceiling's stand-in for a perfect generator."""
    ids = np.unique(train.patients)
    rng = np.random.default_rng(seed)
    n_extra = int(round(len(ids) * fraction))
    extra_ids = rng.choice(ids, size=n_extra, replace=False) if n_extra else ids[:0]
    extra = np.isin(train.patients, extra_ids)
    return train.take(~extra), train.take(extra)


def rare_top_up(base_labels: np.ndarray, syn_labels: np.ndarray, class_names: list[str],
                rng: np.random.Generator) -> np.ndarray:
    """Indices of synthetic images that top each class up to the real count of the most common
    pathology (``No Finding`` is not a pathology); an image counts for every label it carries."""
    counts = base_labels.sum(axis=0).astype(int)
    pathologies = [c for c, n in enumerate(class_names) if n != "No Finding"] or \
        list(range(len(class_names)))
    target = int(max(counts[c] for c in pathologies))
    have = counts.copy()
    chosen: list[int] = []
    taken = np.zeros(len(syn_labels), bool)
    for c in sorted(pathologies, key=lambda c: counts[c]):
        candidates = rng.permutation(np.flatnonzero((syn_labels[:, c] > 0) & ~taken))
        need = target - have[c]
        for i in candidates[:max(0, need)]:
            chosen.append(int(i))
            taken[i] = True
            have += syn_labels[i].astype(int)
    return np.array(sorted(chosen), dtype=np.int64)


def judge_keep(model: Any, base: Split, syn_images: np.ndarray, syn_labels: np.ndarray) -> \
        np.ndarray:
    """Synthetic images the real-only classifier recognizes: for each of their labels, rated
    above the median rating of real training images without that label."""
    real_probs = predict_probs(model, base.images)
    syn_probs = predict_probs(model, syn_images)
    thresholds = np.array([np.median(real_probs[base.labels[:, c] == 0, c])
                           if (base.labels[:, c] == 0).any() else 0.0
                           for c in range(base.labels.shape[1])])
    passes = (syn_probs >= thresholds[None, :]) | (syn_labels == 0)
    return np.flatnonzero(passes.all(axis=1))


def arm_pools(strategy: Strategy, base: Split, extra: Split, syn_images: np.ndarray,
              syn_labels: np.ndarray, class_names: list[str], seed: int,
              judged: np.ndarray | None = None) -> list[Pool]:
    """The training pools of one arm (``pretrain``: the fine-tuning pools; its pre-training pool
    is :func:`pretrain_pool`)."""
    real = Pool("real", base.images, base.labels)
    if strategy.kind in ("real", "pretrain"):
        return [real]
    if strategy.kind == "ceiling":
        return [real, Pool("extra real", extra.images, extra.labels)]
    syn = Pool("synthetic", syn_images, syn_labels, synthetic=True)
    if strategy.kind == "all":
        return [real, syn]
    if strategy.kind == "share":
        assert strategy.value is not None
        return [replace(real, share=1 - strategy.value), replace(syn, share=strategy.value)]
    if strategy.kind == "weight":
        assert strategy.value is not None
        return [real, replace(syn, weight=strategy.value)]
    if strategy.kind == "rare":
        pick = rare_top_up(base.labels, syn_labels, class_names, np.random.default_rng(seed))
        return [real, replace(syn, images=syn_images[pick], labels=syn_labels[pick])]
    if strategy.kind == "judge":
        assert judged is not None, "judge needs the real arm's model first"
        return [replace(real, share=1 - JUDGE_SHARE),
                replace(syn, images=syn_images[judged], labels=syn_labels[judged],
                        share=JUDGE_SHARE)]
    raise AssertionError(strategy)


def pretrain_pool(syn_images: np.ndarray, syn_labels: np.ndarray) -> Pool:
    return Pool("synthetic (pre-training)", syn_images, syn_labels, synthetic=True)


# ----------------------------------------------------------------------------- comparison
def _macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.nanmean([np.nan if v is None else v for v in per_class_auroc(y, p)]))


def _patient_resamples(patients: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    ids, rows = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(rows == i) for i in range(len(ids))]
    return [np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
            for _ in range(resamples)]


def _verdict_text(low: float, high: float, n_patients: int) -> str:
    if low > 0:
        return "helped: it beat real alone on the test patients"
    if high < 0:
        return "hurt: it did worse than real alone on the test patients"
    return (f"cannot tell at this n ({n_patients} test patients): the interval includes 0; "
            "add test patients (--test-data) or seeds")


def verdict(y_test: np.ndarray, real: np.ndarray, mixed: np.ndarray, patients: np.ndarray,
            resamples: int = BOOTSTRAP, seed: int = 0,
            picks: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Macro-AUROC difference of two arms (their probabilities averaged over seeds) with a 95%
    percentile interval from resampling test *patients* with replacement, per-class differences
    with theirs, and the verdict those numbers support: helped (interval above 0), hurt (below
    0) or cannot tell."""
    picks = picks if picks is not None else _patient_resamples(patients, resamples, seed)
    with np.errstate(all="ignore"):
        base_auc = np.array([np.nan if v is None else v for v in per_class_auroc(y_test, real)])
        arm_auc = np.array([np.nan if v is None else v for v in per_class_auroc(y_test, mixed)])
        diff = float(np.nanmean(arm_auc) - np.nanmean(base_auc))
        boots, per_class = [], []
        for pick in picks:
            a = np.array([np.nan if v is None else v for v in per_class_auroc(y_test[pick],
                                                                               mixed[pick])])
            b = np.array([np.nan if v is None else v for v in per_class_auroc(y_test[pick],
                                                                               real[pick])])
            boots.append(np.nanmean(a) - np.nanmean(b))
            per_class.append(a - b)
    boots_arr = np.asarray(boots)
    boots_arr = boots_arr[np.isfinite(boots_arr)]
    low, high = ((float(np.percentile(boots_arr, 2.5)), float(np.percentile(boots_arr, 97.5)))
                 if len(boots_arr) else (float("nan"), float("nan")))
    n_patients = int(len(np.unique(patients)))
    class_diff = arm_auc - base_auc
    with np.errstate(all="ignore"):
        pc = np.asarray(per_class)
        class_low = [float(np.nanpercentile(pc[:, c], 2.5)) if np.isfinite(pc[:, c]).any()
                     else None for c in range(pc.shape[1])]
        class_high = [float(np.nanpercentile(pc[:, c], 97.5)) if np.isfinite(pc[:, c]).any()
                      else None for c in range(pc.shape[1])]
    return {"difference": diff, "low": low, "high": high, "n_patients": n_patients,
            "resamples": int(len(boots_arr)), "text": _verdict_text(low, high, n_patients),
            "class_difference": [None if not np.isfinite(v) else float(v) for v in class_diff],
            "class_low": class_low, "class_high": class_high}


# ----------------------------------------------------------------------------------- result
@dataclass
class DownstreamResult:
    """Test AUROC of every arm over seeds, each compared with ``real``."""

    out: Path | None
    result: dict[str, Any]

    def summary(self) -> str:
        r = self.result
        lines = [f"test: {r['n_test']} real images of {r['n_test_patients']} patients "
                 f"({', '.join(r['test_sources'])}); training: {r['n_real_train']} real images "
                 + (f"(+{r['n_extra_real']} held back for the ceiling) " if r["n_extra_real"]
                    else "")
                 + f"and {r['n_synthetic']} synthetic; {r['seeds']} seed(s) x "
                 f"{r['recipe']['steps']} steps",
                 f"{'strategy':14s} {'synthetic':>9s} {'macro AUROC':>15s} "
                 f"{'vs real (95% over patients)':>29s} {'of ceiling':>10s}  verdict"]
        for name, arm in r["arms"].items():
            v = arm.get("verdict")
            vs = ("" if v is None
                  else f"{v['difference']:+.3f} ({v['low']:+.3f} to {v['high']:+.3f})")
            share = arm.get("of_ceiling")
            lines.append(f"{name:14s} {arm['n_synthetic_used']:9d} "
                         f"{arm['macro']['mean']:.3f} +/- {arm['macro']['std']:.3f} {vs:>29s} "
                         f"{'' if share is None else f'{share:.0%}':>10s}  "
                         f"{'' if v is None else _short(v['text'])}")
        classes = [c for c, info in r["classes"].items() if info["n_test_positive"]
                   >= MIN_TEST_POSITIVES]
        if classes and len(r["arms"]) > 1:
            arms = [a for a in r["arms"] if a != "real"]
            lines.append(f"per class (classes with >= {MIN_TEST_POSITIVES} test positives, rarest "
                         "in training first): AUROC difference vs real")
            lines.append(f"{'class':20s} {'train':>5s} {'test':>5s} {'real':>6s} "
                         + " ".join(f"{a[:10]:>10s}" for a in arms))
            for c in classes:
                info = r["classes"][c]
                diffs = [r["arms"][a]["verdict"]["class_difference"][info["index"]] for a in arms]
                real_auc = r["arms"]["real"]["class_auroc"][info["index"]]
                lines.append(f"{c[:20]:20s} {info['n_train']:5d} {info['n_test_positive']:5d} "
                             f"{'n/a' if real_auc is None else f'{real_auc:.3f}':>6s} "
                             + " ".join(f"{'n/a' if d is None else f'{d:+.3f}':>10s}"
                                        for d in diffs))
        lines.append(r["recommendation"]["text"])
        if self.out is not None:
            lines.append(f"wrote {self.out}")
        return "\n".join(lines)


def _short(text: str) -> str:
    """A verdict's first words: helped / hurt / cannot tell."""
    return "cannot tell" if text.startswith("cannot tell") else text.split(":")[0]


def _stats(values: list[float]) -> dict[str, float | None]:
    vals = np.asarray([v for v in values if np.isfinite(v)])
    if not len(vals):
        return {"mean": None, "std": None}
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}


def recommend(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The synthetic arm to use: the largest mean gain among those that never hurt (interval's
    low end above NEVER_HURTS, mean at least 0); none when no arm qualifies, then the closest
    one (largest mean gain) is named beside the ceiling."""
    synthetic = {name: a for name, a in arms.items() if a.get("synthetic")}
    ok = [(a["verdict"]["difference"], name) for name, a in synthetic.items()
          if a["verdict"]["low"] > NEVER_HURTS and a["verdict"]["difference"] >= 0]
    ceiling = arms.get("ceiling", {}).get("verdict")
    ceiling_text = ("" if ceiling is None else
                    f"; more real data (the ceiling) gave {ceiling['difference']:+.3f} "
                    f"({ceiling['low']:+.3f} to {ceiling['high']:+.3f})")

    def gain(name: str) -> str:
        v, share = synthetic[name]["verdict"], synthetic[name].get("of_ceiling")
        return (f"{v['difference']:+.3f} macro AUROC ({v['low']:+.3f} to {v['high']:+.3f}, "
                f"{_short(v['text'])}" + ("" if share is None else f", {share:.0%} of the ceiling")
                + ")")

    if not ok:
        closest = max(synthetic, key=lambda n: synthetic[n]["verdict"]["difference"],
                      default=None)
        return {"strategy": None, "closest": closest,
                "text": "recommended: none; no way of adding these synthetic images kept the "
                        f"macro AUROC within {NEVER_HURTS:+.2f} of real alone with a gain at "
                        "least 0" + ("" if closest is None else
                                     f" (closest: {closest}, {gain(closest)})")
                        + f"{ceiling_text}. Train on real images only."}
    name = max(ok)[1]
    return {"strategy": name,
            "text": f"recommended: {name} ({synthetic[name]['description']}): {gain(name)}"
                    f"{ceiling_text}"}


@dataclass
class _Data:
    class_names: list[str]
    train: Split
    test: Split
    test_sources: list[str]
    heldout_names: set[str]
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)


def _load_real(data: Path, test_data: list[Path]) -> _Data:
    """Training patients (the cache's train + val splits) and test patients (its test split
    plus every --test-data cache, all of its images), checked to be different patients."""
    with open_cache(data) as reader:
        class_names = list(reader.class_names)
        multi_hot = np.asarray(reader.multi_hot)
        patients = np.asarray(reader.patient_ids)
        names = np.asarray(reader.image_index).astype(str)
        x_train, train_idx = read_split(reader, "train")
        x_val, val_idx = read_split(reader, "val")
        x_test, test_idx = read_split(reader, "test")
        fingerprint = str(reader.fingerprint)
    idx = np.concatenate([train_idx, val_idx])
    train = Split(np.concatenate([x_train, x_val]), multi_hot[idx], patients[idx])
    tests = [Split(x_test, multi_hot[test_idx], patients[test_idx])] if len(test_idx) else []
    sources = [f"{data.name} test split"] if len(test_idx) else []
    heldout = set(names[test_idx].tolist())
    for extra in test_data:
        with open_cache(extra) as reader:
            if list(reader.class_names) != class_names:
                raise CxrError(f"{extra}: its classes ({', '.join(reader.class_names)}) differ "
                               f"from {data.name}'s; prepare it with --classes "
                               f"\"{','.join(class_names)}\" --multi-label keep")
            n = len(reader.multi_hot)
            images = np.concatenate([np.asarray(reader.read(np.arange(s, min(n, s + 2048))))
                                     for s in range(0, n, 2048)]) if n else None
            if images is None or images.shape[1] != train.images.shape[1]:
                raise CxrError(f"{extra}: "
                               + ("no images" if images is None else
                                  f"{images.shape[1]}x{images.shape[1]} images, not "
                                  f"{train.images.shape[1]}x{train.images.shape[1]}")
                               + f"; prepare it with --size {train.images.shape[1]}")
            tests.append(Split(images, np.asarray(reader.multi_hot),
                               np.asarray(reader.patient_ids)))
            heldout |= set(np.asarray(reader.image_index).astype(str).tolist())
            sources.append(extra.name)
            shared = set(train.patients.tolist()) & set(tests[-1].patients.tolist())
            if shared:
                raise CxrError(f"{extra}: {len(shared)} of its patients (e.g. Patient ID "
                               f"{sorted(shared)[0]}) are training patients of {data}; test "
                               "patients must be other patients")
    if not tests:
        raise CxrError(f"{data}: the cache has no test images; re-run `cxraug prepare` with "
                       "--test-fraction above 0 (or --test-list), or pass --test-data")
    test = Split(*(np.concatenate([getattr(t, part) for t in tests])
                   for part in ("images", "labels", "patients")))
    return _Data(class_names, train, test, sources, heldout, fingerprint)


def downstream(data: str | os.PathLike, synthetic: str | os.PathLike,
               out: str | os.PathLike | None = None, seeds: int = 3,
               strategies: list[str] | tuple[str, ...] = DEFAULT_STRATEGIES,
               test_data: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
               holdback: float = HOLDBACK, recipe: ClassifierRecipe | None = None,
               progress: bool = True) -> DownstreamResult:
    """Train one classifier per strategy and seed; compare each with ``real`` on test patients."""
    started = time.time()
    data, synthetic = Path(data), Path(synthetic)
    recipe = recipe or ClassifierRecipe()
    recipe.validate()
    if seeds < 1:
        raise CxrError(f"--seeds {seeds}: use at least 1 (3 or more to see the spread)")
    arms_wanted = parse_strategies(list(strategies))
    with_ceiling = any(s.kind == "ceiling" for s in arms_wanted)
    if with_ceiling and not 0 < holdback < 1:
        raise CxrError(f"--holdback {holdback}: the ceiling needs a share of the training "
                       "patients between 0 and 1 (e.g. 0.33)")
    real = _load_real(data, [Path(p) for p in test_data])
    x_syn, y_syn, syn_names, skipped = load_synthetic(synthetic, real.class_names,
                                                      real.train.images.shape[1], progress)
    clash = real.heldout_names.intersection(syn_names)
    if clash:
        raise CxrError(f"{synthetic}: {len(clash)} synthetic rows share a name with real "
                       f"test images (e.g. {sorted(clash)[0]}); regenerate them")
    base, extra = (hold_back(real.train, holdback) if with_ceiling
                   else (real.train, real.train.take(np.zeros(len(real.train), bool))))
    test = real.test
    probs: dict[str, list[np.ndarray]] = {s.name: [] for s in arms_wanted}
    aucs: dict[str, list[float]] = {s.name: [] for s in arms_wanted}
    runs: list[dict[str, Any]] = []
    for seed in range(seeds):
        real_model = None
        for strategy in arms_wanted:
            judged = (judge_keep(real_model, base, x_syn, y_syn)
                      if strategy.kind == "judge" else None)
            pools = arm_pools(strategy, base, extra, x_syn, y_syn, real.class_names, seed, judged)
            init, pre, arm_recipe = None, None, recipe
            if strategy.kind == "pretrain":  # half the steps each: the same compute as any arm
                arm_recipe = replace(recipe, steps=max(1, recipe.steps // 2),
                                     warmup_steps=recipe.warmup_steps // 2)
                pre = fit_mix([pretrain_pool(x_syn, y_syn)], arm_recipe, seed=seed,
                              progress=progress, desc=f"{strategy.name} (synthetic) seed {seed}")
                init = pre.model
            fit: MixFit = fit_mix(pools, arm_recipe, seed=seed, init=init, progress=progress,
                                  desc=f"{strategy.name} seed {seed}")
            if strategy.kind == "real":
                real_model = fit.model
            p = predict_probs(fit.model, test.images)
            probs[strategy.name].append(p)
            aucs[strategy.name].append(_macro_auroc(test.labels, p))
            runs.append({"seed": seed, "strategy": strategy.name,
                         "pools": {pool.name: {"images": len(pool), "weight": pool.weight,
                                               "share": pool.share, "synthetic": pool.synthetic}
                                   for pool in pools},
                         "pretrain_images": None if pre is None else len(x_syn),
                         "pretrain_images_seen": None if pre is None else pre.seen,
                         "images_seen": fit.seen, "distinct_images_seen": fit.distinct,
                         "test_macro_auroc": aucs[strategy.name][-1]})
    picks = _patient_resamples(test.patients, BOOTSTRAP, 0)
    mean_probs = {name: np.mean(p, axis=0) for name, p in probs.items()}
    arms: dict[str, dict[str, Any]] = {}
    for strategy in arms_wanted:
        last = [r for r in runs if r["strategy"] == strategy.name][-1]
        n_syn = sum(v["images"] for v in last["pools"].values() if v["synthetic"])
        if strategy.kind == "pretrain":
            n_syn = len(x_syn)
        entry: dict[str, Any] = {
            "description": strategy.description,
            "synthetic": strategy.synthetic, "n_synthetic_used": int(n_syn),
            "macro": _stats(aucs[strategy.name]),
            "class_auroc": per_class_auroc(test.labels, mean_probs[strategy.name]),
        }
        if strategy.name != "real":
            entry["verdict"] = verdict(test.labels, mean_probs["real"],
                                       mean_probs[strategy.name], test.patients, picks=picks)
        arms[strategy.name] = entry
    ceiling_gain = arms.get("ceiling", {}).get("verdict", {}).get("difference")
    for entry in arms.values():
        if entry["synthetic"] and ceiling_gain is not None and ceiling_gain > 0:
            entry["of_ceiling"] = entry["verdict"]["difference"] / ceiling_gain
    order = np.argsort(base.labels.sum(axis=0), kind="stable")
    classes = {real.class_names[c]: {"index": int(c), "n_train": int(base.labels[:, c].sum()),
                                     "n_extra_real": int(extra.labels[:, c].sum()),
                                     "n_synthetic": int(y_syn[:, c].sum()),
                                     "n_test_positive": int(test.labels[:, c].sum())}
               for c in order}
    result = {
        "format": "cxraug-downstream-2", "cxraug_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": str(data), "data_fingerprint": real.fingerprint, "synthetic_csv": str(synthetic),
        "test_data": [str(p) for p in test_data], "test_sources": real.test_sources,
        "seeds": seeds, "recipe": recipe.__dict__, "holdback": holdback if with_ceiling else 0.0,
        "n_real_train": len(base), "n_extra_real": len(extra), "n_synthetic": int(len(x_syn)),
        "n_test": len(test), "n_test_patients": int(len(np.unique(test.patients))),
        "synthetic_skipped": skipped,
        "metric": "macro mean of per-class AUROC on real test patients",
        "arms": arms, "classes": classes, "recommendation": recommend(arms), "runs": runs,
        "seconds": time.time() - started,
    }
    result = _json_safe(result)
    target = None
    if out is not None:
        target = Path(out) / "downstream.json"
        write_json_atomic(target, result)
    return DownstreamResult(out=target, result=result)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else round(float(obj), 6)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
