"""The sections of an evaluate report, registered by name: each is a per-class function and an
overall reducer over what :func:`cxraug.evaluation.report.evaluate` computed once (generated
images, features, judge probabilities, nearest training images) in a :class:`Shared`.

Adding a metric: a function ``(shared, view) -> dict`` for a class and one ``(shared, per_class)
-> dict`` for the overall numbers (merged into ``report["overall"]``), registered with
:func:`register`; its numbers then appear in report.json under ``classes[c][name]``, and
``render.CLASS_CHARTS`` draws a chart of any of them with one entry. Per-class functions use
fixed seeds, never the shared random generator, so their order does not change any number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import metrics as M
from . import realism as R

#: Image pairs per set for mean pairwise MS-SSIM.
MS_SSIM_PAIRS = 300


@dataclass
class Shared:
    """Everything the sections read, computed once per evaluation."""

    classes: list[str]
    cache_idx: dict[str, int]  # class name -> cache class index
    seed: int
    min_heldout: int
    synth: dict[str, np.ndarray]  # uint8 [n, S, S] per class
    synth_class: np.ndarray  # class position of each row of the pooled synthetic set
    syn_feat: np.ndarray
    held_images: np.ndarray
    held_labels: np.ndarray  # cache class index of each held-out image
    held_feat: np.ndarray
    train_feat: np.ndarray
    train_labels: np.ndarray
    train_subset: dict[str, np.ndarray]  # positions into the training split, per class
    subset_images: dict[str, np.ndarray]
    judge: bool
    judge_info: dict[str, Any]
    syn_p: np.ndarray | None = None  # judge probabilities, evaluated-class columns
    held_p: np.ndarray | None = None
    syn_dec: np.ndarray | None = None
    held_dec: np.ndarray | None = None
    held_class: np.ndarray | None = None
    swap: np.ndarray | None = None  # [C, Z, S, S] same z, every label
    swap_feat: np.ndarray | None = None
    nn_distance: np.ndarray | None = None  # pixel distance to the nearest training image
    syn_fdist: np.ndarray | None = None
    near_copy: np.ndarray | None = None
    feat_close: np.ndarray | None = None
    privacy: dict[str, Any] | None = None
    pix_median: float = 0.0
    feat_median: float = 0.0
    pooled_two_sample: Callable[[], dict[str, Any]] | None = None

    def macro(self, per_class: dict[str, Any], section: str, key: str) -> float | None:
        """Mean of a per-class number over the classes that have it."""
        values = [float(v) for c in self.classes
                  if (v := per_class[c][section].get(key)) is not None
                  and not (isinstance(v, float) and np.isnan(v))]
        return float(np.mean(values)) if values else None


@dataclass(frozen=True)
class View:
    """One class: its position and masks into the pooled synthetic and held-out sets."""

    index: int
    name: str
    sel: np.ndarray
    hsel: np.ndarray


@dataclass(frozen=True)
class Section:
    name: str
    per_class: Callable[[Shared, View], dict[str, Any]]
    overall: Callable[[Shared, dict[str, Any]], dict[str, Any]]


SECTIONS: dict[str, Section] = {}


def register(name: str, overall: Callable[[Shared, dict[str, Any]], dict[str, Any]]
             ) -> Callable[[Callable[[Shared, View], dict[str, Any]]], Callable]:
    """Register ``fn`` as the per-class function of section ``name`` (report order)."""

    def wrap(fn: Callable[[Shared, View], dict[str, Any]]) -> Callable:
        if name in SECTIONS:
            raise ValueError(f"report section {name!r} is already registered")
        SECTIONS[name] = Section(name, fn, overall)
        return fn

    return wrap


# ----------------------------------------------------------------------------- realism
def _realism_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    pooled = M.compare_sets(s.syn_feat, s.held_feat, seed=s.seed, min_reference=s.min_heldout)
    base = np.concatenate([s.train_feat[s.train_subset[c]] for c in s.classes])
    pooled_b = M.compare_sets(base, s.held_feat, seed=s.seed, min_reference=s.min_heldout)
    return {"fid": s.macro(per, "realism", "fid"), "kid_mean": s.macro(per, "realism", "kid_mean"),
            "precision": s.macro(per, "realism", "precision"),
            "recall": s.macro(per, "realism", "recall"),
            "pooled": {"synthetic": pooled.to_dict(), "baseline": pooled_b.to_dict()}}


@register("realism", _realism_overall)
def _realism(s: Shared, v: View) -> dict[str, Any]:
    """Synthetic vs held-out real images of the class in feature space (FID, KID, P/R)."""
    return M.compare_sets(s.syn_feat[v.sel], s.held_feat[v.hsel], seed=s.seed,
                          min_reference=s.min_heldout).to_dict()


def _baseline_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    return {f"baseline_{k}": s.macro(per, "baseline", k)
            for k in ("fid", "kid_mean", "precision", "recall")}


@register("baseline", _baseline_overall)
def _baseline(s: Shared, v: View) -> dict[str, Any]:
    """As many real training images against the same held-out ones: a perfect generator."""
    return M.compare_sets(s.train_feat[s.train_subset[v.name]], s.held_feat[v.hsel],
                          seed=s.seed, min_reference=s.min_heldout).to_dict()


# ----------------------------------------------------------------------------- labels
def _label_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    judge = s.judge and s.syn_dec is not None and s.held_dec is not None
    return {"synthetic_auroc": s.macro(per, "label_fidelity", "synthetic_auroc"),
            "real_auroc": s.macro(per, "label_fidelity", "real_auroc"),
            "synthetic_accuracy": float((s.syn_dec == s.synth_class).mean())
            if judge and s.syn_dec is not None else None,
            "real_accuracy": float((s.held_dec == s.held_class).mean())
            if judge and s.held_dec is not None and s.held_class is not None and len(s.held_class)
            else None,
            "label_swap_pixel_ratio": s.macro(per, "label_fidelity", "label_swap_pixel_ratio"),
            "label_swap_feature_ratio": s.macro(per, "label_fidelity",
                                                "label_swap_feature_ratio")}


@register("label_fidelity", _label_overall)
def _label_fidelity(s: Shared, v: View) -> dict[str, Any]:
    """Does the judge see the requested class, and does changing only the label change G(z)?"""
    ci = v.index
    lab: dict[str, Any] = {"synthetic_auroc": None, "synthetic_accuracy": None,
                           "real_auroc": None, "real_accuracy": None,
                           "n_real": int(v.hsel.sum()),
                           "judge_val_auroc": (s.judge_info.get("val_auroc") or {}).get(v.name)}
    if s.judge:
        assert s.syn_p is not None and s.syn_dec is not None
        lab["synthetic_auroc"] = M.auroc(v.sel, s.syn_p[:, ci])
        lab["synthetic_accuracy"] = float((s.syn_dec[v.sel] == ci).mean())
        lab["synthetic_mean_prob"] = float(s.syn_p[v.sel, ci].mean())
        if v.hsel.any():
            assert s.held_p is not None and s.held_dec is not None and s.held_class is not None
            lab["real_auroc"] = M.auroc(s.held_class == ci, s.held_p[:, ci])
            lab["real_accuracy"] = float((s.held_dec[v.hsel] == ci).mean())
            lab["real_mean_prob"] = float(s.held_p[v.hsel, ci].mean())
    assert s.swap is not None and s.swap_feat is not None
    lab.update(label_swap(s.swap, s.swap_feat, ci))
    return lab


def label_swap(swap: np.ndarray, swap_feat: np.ndarray, ci: int) -> dict[str, float | None]:
    """Paper Fig. 9 as numbers: mean distance between G(z, c) and G(z, b), b != c (same z),
    divided by the mean distance between G(z, c) and G(z', c) (same label, another z).

    ~0: the label does not change the image; ~1 or more: changing the label changes the image as
    much as drawing a new image. Needs at least 2 classes and 2 latents."""
    n_cls, n_z = swap.shape[:2]
    out: dict[str, float | None] = {"label_swap_pixel_ratio": None,
                                    "label_swap_feature_ratio": None}
    if n_cls < 2 or n_z < 2:
        return out
    for key, arr in (("pixel", swap.reshape(n_cls, n_z, -1).astype(np.float64)),
                     ("feature", swap_feat.astype(np.float64))):
        own = arr[ci]
        others = np.delete(arr, ci, axis=0)
        label_d = np.sqrt(((others - own[None]) ** 2).sum(-1)).mean()
        zd = np.sqrt(((own[:, None] - own[None]) ** 2).sum(-1))
        z_d = zd[~np.eye(n_z, dtype=bool)].mean()
        out[f"label_swap_{key}_distance"] = float(label_d)
        out[f"same_label_{key}_distance"] = float(z_d)
        out[f"label_swap_{key}_ratio"] = float(label_d / z_d) if z_d > 0 else None
    return out


# ----------------------------------------------------------------------------- diversity
def _diversity_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic_ms_ssim": s.macro(per, "diversity", "synthetic_ms_ssim"),
            "real_ms_ssim": s.macro(per, "diversity", "real_ms_ssim")}


@register("diversity", _diversity_overall)
def _diversity(s: Shared, v: View) -> dict[str, Any]:
    """Mean pairwise MS-SSIM within the class, and pixel diversity against real training."""
    syn_ms, syn_pairs = M.mean_pairwise_ms_ssim(s.synth[v.name], MS_SSIM_PAIRS, seed=s.seed)
    real_ms, real_pairs = M.mean_pairwise_ms_ssim(s.subset_images[v.name], MS_SSIM_PAIRS,
                                                  seed=s.seed)
    subset = s.subset_images[v.name]
    return {"synthetic_ms_ssim": syn_ms, "real_ms_ssim": real_ms,
            "synthetic_pairs": syn_pairs, "real_pairs": real_pairs,
            "pixel_ratio": R.diversity_ratio(R.thumbnails(s.synth[v.name]), R.thumbnails(subset))
            if len(subset) > 1 else None}


# ----------------------------------------------------------------------------- two-sample
def _two_sample_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    return s.pooled_two_sample() if s.pooled_two_sample is not None else {}


@register("two_sample", _two_sample_overall)
def _two_sample(s: Shared, v: View) -> dict[str, Any]:
    """Can a logistic regression tell this class's synthetic images from its real ones?"""
    return class_two_sample(s.synth[v.name], s.held_images[v.hsel], s.subset_images[v.name],
                            s.seed)


def class_two_sample(synthetic: np.ndarray, heldout: np.ndarray, train: np.ndarray,
                     seed: int) -> dict[str, Any]:
    """Synthetic vs held-out real images of one class, beside real training vs held-out."""
    if len(heldout) < R.MIN_TWO_SAMPLE:
        return {"synthetic": None, "real_vs_real": None,
                "note": f"too few held-out images (n={len(heldout)})"}
    held_t = R.thumbnails(heldout)
    syn_t = R.thumbnails(synthetic)
    syn = R.mean_two_sample([R.two_sample_test(syn_t, held_t, seed=seed + r)
                             for r in range(R.TWO_SAMPLE_REPEATS)])
    real = (R.two_sample_test(R.thumbnails(train), held_t, seed=seed).to_dict()
            if len(train) >= R.MIN_TWO_SAMPLE else None)
    return {"synthetic": syn.to_dict(), "real_vs_real": real, "note": None}


# ----------------------------------------------------------------------------- copies
def _memorization_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    assert s.near_copy is not None and s.feat_close is not None
    return {"near_copies": int(s.near_copy.sum()),
            "near_copy_fraction": float(s.near_copy.mean()),
            "feature_near_fraction": float(s.feat_close.mean()),
            "privacy_filter_fraction": None if s.privacy is None
            else float(s.privacy["copy"].mean())}


@register("memorization", _memorization_overall)
def _memorization(s: Shared, v: View) -> dict[str, Any]:
    """How close the class's images are to their nearest training image (pixels, features)."""
    assert s.nn_distance is not None and s.syn_fdist is not None
    assert s.near_copy is not None and s.feat_close is not None
    d_pix, d_feat = s.nn_distance[v.sel], s.syn_fdist[v.sel]
    return {
        "near_copies": int(s.near_copy[v.sel].sum()),
        "near_copy_fraction": float(s.near_copy[v.sel].mean()),
        "feature_near_fraction": float(s.feat_close[v.sel].mean()),
        "privacy_filter_fraction": None if s.privacy is None
        else float(s.privacy["copy"][v.sel].mean()),
        "pixel_distance_min": float(d_pix.min()),
        "pixel_distance_median": float(np.median(d_pix)),
        "pixel_ratio_median": float(np.median(d_pix) / s.pix_median) if s.pix_median > 0
        else None,
        "feature_ratio_median": float(np.median(d_feat) / s.feat_median) if s.feat_median > 0
        else None,
    }


def compute(s: Shared) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per-class report entries, overall numbers) from every registered section."""
    per_class: dict[str, Any] = {}
    for ci, name in enumerate(s.classes):
        view = View(ci, name, s.synth_class == ci, s.held_labels == s.cache_idx[name])
        entry: dict[str, Any] = {
            "n_synthetic": int(view.sel.sum()), "n_real_heldout": int(view.hsel.sum()),
            "n_real_train": int((s.train_labels == s.cache_idx[name]).sum())}
        for section in SECTIONS.values():
            entry[section.name] = section.per_class(s, view)
        per_class[name] = entry
    overall: dict[str, Any] = {}
    for section in SECTIONS.values():
        overall.update(section.overall(s, per_class))
    return per_class, overall
