"""The sections of an evaluate report, registered by name: each is a per-class function and an
overall reducer over what :func:`cxraug.evaluation.report.evaluate` computed once (generated
images, features, judge probabilities, nearest training images) in a
:class:`~cxraug.evaluation.shared.Shared`.

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
from .shared import Shared

#: Image pairs per set for mean pairwise MS-SSIM.
MS_SSIM_PAIRS = 300


@dataclass(frozen=True)
class View:
    """One class: its position and masks into the pooled synthetic and held-out sets."""

    index: int  # the class's position in ``Shared.classes`` (its judge column)
    name: str
    sel: np.ndarray  # bool [N]: its images in the pooled synthetic set
    hsel: np.ndarray  # bool [H]: its images among the held-out real ones


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
    pooled = M.compare_sets(s.synthetic_features, s.heldout_features, seed=s.seed,
                            min_reference=s.min_heldout)
    base = np.concatenate([s.train_features[s.train_subset[c]] for c in s.classes])
    pooled_b = M.compare_sets(base, s.heldout_features, seed=s.seed, min_reference=s.min_heldout)
    return {"fid": s.macro(per, "realism", "fid"), "kid_mean": s.macro(per, "realism", "kid_mean"),
            "precision": s.macro(per, "realism", "precision"),
            "recall": s.macro(per, "realism", "recall"),
            "pooled": {"synthetic": pooled.to_dict(), "baseline": pooled_b.to_dict()}}


@register("realism", _realism_overall)
def _realism(s: Shared, v: View) -> dict[str, Any]:
    """Synthetic vs held-out real images of the class in feature space (FID, KID, P/R)."""
    return M.compare_sets(s.synthetic_features[v.sel], s.heldout_features[v.hsel], seed=s.seed,
                          min_reference=s.min_heldout).to_dict()


def _baseline_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    return {f"baseline_{k}": s.macro(per, "baseline", k)
            for k in ("fid", "kid_mean", "precision", "recall")}


@register("baseline", _baseline_overall)
def _baseline(s: Shared, v: View) -> dict[str, Any]:
    """As many real training images against the same held-out ones: a perfect generator."""
    return M.compare_sets(s.train_features[s.train_subset[v.name]], s.heldout_features[v.hsel],
                          seed=s.seed, min_reference=s.min_heldout).to_dict()


# ----------------------------------------------------------------------------- labels
def _label_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    j = s.judge
    return {"synthetic_auroc": s.macro(per, "label_fidelity", "synthetic_auroc"),
            "real_auroc": s.macro(per, "label_fidelity", "real_auroc"),
            "synthetic_accuracy": float((j.synthetic_decisions == s.synthetic_class).mean())
            if j is not None else None,
            "real_accuracy": float((j.heldout_decisions == j.heldout_class).mean())
            if j is not None and len(j.heldout_class) else None,
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
    j = s.judge
    if j is not None:
        lab["synthetic_auroc"] = M.auroc(v.sel, j.synthetic_probs[:, ci])
        lab["synthetic_accuracy"] = float((j.synthetic_decisions[v.sel] == ci).mean())
        lab["synthetic_mean_prob"] = float(j.synthetic_probs[v.sel, ci].mean())
        if v.hsel.any():
            lab["real_auroc"] = M.auroc(j.heldout_class == ci, j.heldout_probs[:, ci])
            lab["real_accuracy"] = float((j.heldout_decisions[v.hsel] == ci).mean())
            lab["real_mean_prob"] = float(j.heldout_probs[v.hsel, ci].mean())
    assert s.label_swap_images is not None and s.label_swap_features is not None
    lab.update(label_swap(s.label_swap_images, s.label_swap_features, ci))
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
    syn_ms, syn_pairs = M.mean_pairwise_ms_ssim(s.synthetic[v.name], MS_SSIM_PAIRS, seed=s.seed)
    real_ms, real_pairs = M.mean_pairwise_ms_ssim(s.train_subset_images[v.name], MS_SSIM_PAIRS,
                                                  seed=s.seed)
    subset = s.train_subset_images[v.name]
    return {"synthetic_ms_ssim": syn_ms, "real_ms_ssim": real_ms,
            "synthetic_pairs": syn_pairs, "real_pairs": real_pairs,
            "pixel_ratio": R.diversity_ratio(R.thumbnails(s.synthetic[v.name]),
                                             R.thumbnails(subset))
            if len(subset) > 1 else None}


# ----------------------------------------------------------------------------- two-sample
def _two_sample_overall(s: Shared, per: dict[str, Any]) -> dict[str, Any]:
    return dict(s.pooled_probes) if s.pooled_probes is not None else {}


@register("two_sample", _two_sample_overall)
def _two_sample(s: Shared, v: View) -> dict[str, Any]:
    """Can a logistic regression tell this class's synthetic images from its real ones?"""
    return class_two_sample(s.synthetic[v.name], s.heldout_images[v.hsel],
                            s.train_subset_images[v.name], s.seed)


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
    assert s.neighbours is not None
    nb = s.neighbours
    return {"near_copies": int(nb.near_copy.sum()),
            "near_copy_fraction": float(nb.near_copy.mean()),
            "feature_near_fraction": float(nb.feature_near.mean()),
            "privacy_filter_fraction": float(nb.near_copy_check["copy"].mean())}


@register("memorization", _memorization_overall)
def _memorization(s: Shared, v: View) -> dict[str, Any]:
    """How close the class's images are to their nearest training image (pixels, features)."""
    assert s.neighbours is not None
    nb = s.neighbours
    d_pix, d_feat = nb.pixel_distance[v.sel], nb.feature_distance[v.sel]
    return {
        "near_copies": int(nb.near_copy[v.sel].sum()),
        "near_copy_fraction": float(nb.near_copy[v.sel].mean()),
        "feature_near_fraction": float(nb.feature_near[v.sel].mean()),
        "privacy_filter_fraction": float(nb.near_copy_check["copy"][v.sel].mean()),
        "pixel_distance_min": float(d_pix.min()),
        "pixel_distance_median": float(np.median(d_pix)),
        "pixel_ratio_median": float(np.median(d_pix) / nb.heldout_pixel_median)
        if nb.heldout_pixel_median > 0 else None,
        "feature_ratio_median": float(np.median(d_feat) / nb.heldout_feature_median)
        if nb.heldout_feature_median > 0 else None,
    }


def compute(s: Shared) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per-class report entries, overall numbers) from every registered section."""
    per_class: dict[str, Any] = {}
    for ci, name in enumerate(s.classes):
        view = View(ci, name, s.synthetic_class == ci, s.heldout_labels == s.cache_index[name])
        entry: dict[str, Any] = {
            "n_synthetic": int(view.sel.sum()), "n_real_heldout": int(view.hsel.sum()),
            "n_real_train": int((s.train_labels == s.cache_index[name]).sum())}
        for section in SECTIONS.values():
            entry[section.name] = section.per_class(s, view)
        per_class[name] = entry
    overall: dict[str, Any] = {}
    for section in SECTIONS.values():
        overall.update(section.overall(s, per_class))
    return per_class, overall
