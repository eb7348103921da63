"""The realism probes as one battery: what a person sees when real and synthetic chest X-rays lie
side by side, each as a number beside its real-vs-real figure, one rule that ranks generators by
all of them, and a plain-language warning for each that fails.

No single number is the target: the pixel two-sample test on standardized 32x32 thumbnails cannot
see contrast, exposure or fine detail, and a recipe tuned to it alone made washed-out, blurry
images. So the battery looks at:

* **intensity** (raw 8-bit pixels): per-image contrast (pixel std) and dynamic range (99th minus
  1st percentile) as ratios to real, the spread of exposure (std of the per-image mean) as a
  ratio, the mean brightness as a shift in units of real exposure spread, and a linear two-sample
  test on 32-bin intensity histograms;
* **sharpness** (per-image standardized, so contrast does not count): the share of power in the
  top octave of spatial frequencies (geometric mean over images) as a ratio to real (below:
  blurry; above: noisy or over-sharpened), the octave bands for the report, and a linear
  two-sample test on the log radially averaged power spectrum;
* **a learned two-sample test**: a small CNN at native resolution (:mod:`cxraug.probes.cnn`);
* **layout**: the existing linear test on standardized 32x32 thumbnails.

Each probe has a *distance* from "like real" (``|ln ratio|``, ``accuracy - 0.5``, ``|shift|``) and
a *tolerance*, the distance at which it fails (the targets of issue 20: contrast within 0.9-1.1,
two-sample accuracies at most 0.70 / 0.80 / 0.65, ...). ``score = distance / tolerance``: at most
1 passes. The same distance is measured between two sets of real patients (``real``): a probe
only warns when it fails *and* is further from real than real patients are from each other (by
``WARN_MARGIN`` tolerances).

The checkpoint rule (:func:`realism_gap`): the worst probe's score minus its real-vs-real score,
so every probe counts in units of its own tolerance and the noise floor of the data is taken out.
Lower is better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .cnn import cnn_two_sample_test
from .stats import (
    as_gray,
    feature_two_sample,
    intensity_histograms,
    radial_spectra,
    spectral_bands,
    thumbnails,
    two_sample_test,
    wilson_interval,
)

#: Training epochs of the CNN two-sample test (tuned on real NIH images: the shipped model's
#: images 0.97, two sets of real patients 0.50, real images with a faint fixed pattern 0.68).
CNN_EPOCHS = 16


@dataclass
class Probe:
    """One probe's answer for a synthetic set, with the same measured on real patients."""

    name: str
    group: str  # intensity | sharpness | learned | layout
    kind: str  # ratio | shift | accuracy
    value: float
    real: float | None  # the same between two sets of real patients
    score: float  # distance / tolerance: <= 1 passes
    real_score: float | None
    passed: bool
    warning: str | None = None
    low: float | None = None  # 95% interval (accuracies)
    high: float | None = None
    n_per_side: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Spec:
    """How one probe is judged: its group, kind, tolerance and the warnings it gives."""

    group: str
    kind: str
    tolerance: float  # in the probe's distance: ln-ratio, shift or accuracy - 0.5
    describe: str  # what the number is, for tables
    too_low: str = ""  # warning templates ({v}: value, {r}: real-vs-real)
    too_high: str = ""


#: The probes, in report order. Tolerances are the targets of the realism issue (issue 20).
SPECS: dict[str, Spec] = {
    "contrast": Spec("intensity", "ratio", math.log(1.1),
                     "per-image contrast (pixel std), synthetic / real",
                     "washed out: contrast {v:.2f}x that of real images",
                     "too harsh: contrast {v:.2f}x that of real images"),
    "dynamic_range": Spec("intensity", "ratio", math.log(1.1),
                          "per-image 99th - 1st percentile, synthetic / real",
                          "no black background or bright bone: grey-level range {v:.2f}x real",
                          "grey-level range {v:.2f}x real: clipped blacks and whites"),
    "exposure_spread": Spec("intensity", "ratio", math.log(1.25),
                            "spread of per-image mean brightness, synthetic / real",
                            "every image exposed alike: exposure spread {v:.2f}x real",
                            "exposure varies {v:.2f}x as much as in real images"),
    "brightness": Spec("intensity", "shift", 0.5,
                       "mean brightness shift, in real exposure spreads",
                       "too dark: mean brightness {v:+.2f} real exposure spreads",
                       "too bright: mean brightness {v:+.2f} real exposure spreads"),
    "histogram_c2st": Spec("intensity", "accuracy", 0.20,
                           "two-sample accuracy, logistic regression on intensity histograms",
                           too_high="grey levels unlike real: a classifier on intensity "
                                    "histograms tells them apart {v:.0%} of the time "
                                    "(real patients: {r:.0%})"),
    "hf_energy": Spec("sharpness", "ratio", math.log(1.1),
                      "share of power in the top octave of spatial frequencies, synthetic / real",
                      "blurry: {v:.2f}x the fine detail of real images",
                      "over-sharpened or noisy: {v:.2f}x the fine detail of real images"),
    "spectrum_c2st": Spec("sharpness", "accuracy", 0.20,
                          "two-sample accuracy, logistic regression on the log power spectrum",
                          too_high="detail unlike real: a classifier on power spectra tells "
                                   "them apart {v:.0%} of the time (real patients: {r:.0%})"),
    "cnn_c2st": Spec("learned", "accuracy", 0.30,
                     "two-sample accuracy, a small CNN at native resolution",
                     too_high="a CNN tells them from real images {v:.0%} of the time "
                              "(real patients: {r:.0%})"),
    "pixel_c2st": Spec("layout", "accuracy", 0.15,
                       "two-sample accuracy, logistic regression on standardized 32x32 pixels",
                       too_high="layout unlike real: a classifier on standardized 32x32 pixels "
                                "tells them apart {v:.0%} of the time (real patients: {r:.0%})"),
}

#: A failing probe warns only when it is further from real than real patients are from each
#: other by more than this (in tolerances): at ~100 images a side two sets of real patients
#: differ by up to ~10% in fine detail, the probe's whole tolerance.
WARN_MARGIN = 0.5


@dataclass
class Summary:
    """Per-image summaries of one image set, computed once and reused by every comparison."""

    n: int
    std: np.ndarray
    mean: np.ndarray
    p01: np.ndarray
    p99: np.ndarray
    hist: np.ndarray
    log_spectrum: np.ndarray
    hf_share: np.ndarray
    bands: dict[str, np.ndarray]
    thumbs: np.ndarray
    images: np.ndarray  # uint8, for the CNN


def summarize(images: np.ndarray) -> Summary:
    """:class:`Summary` of uint8 (or 0..255) images ``[N, H, W]``."""
    x = as_gray(images)
    flat = x.reshape(len(x), -1)
    p01, p99 = np.percentile(flat, [1, 99], axis=1)
    spectra = radial_spectra(x)
    bands = spectral_bands(spectra)
    top = list(bands)[-1]
    u8 = np.asarray(images)
    if u8.ndim == 4:
        u8 = u8[..., 0]
    return Summary(n=len(x), std=flat.std(axis=1), mean=flat.mean(axis=1), p01=p01, p99=p99,
                   hist=np.sqrt(intensity_histograms(x)), log_spectrum=np.log(spectra + 1e-12),
                   hf_share=bands[top], bands=bands, thumbs=thumbnails(x), images=u8)


def _geo(values: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-300)))))


def _distance(kind: str, value: float) -> float:
    if kind == "ratio":
        return abs(math.log(value)) if value > 0 else math.inf
    if kind == "shift":
        return abs(value)
    return max(value - 0.5, 0.0)


def _values(name: str, a: Summary, b: Summary, seed: int, repeats: int,
            cnn_epochs: int) -> tuple[float, dict[str, Any]]:
    """Probe ``name`` of set ``a`` against reference set ``b``: value and details."""
    if SPECS[name].kind == "accuracy" and repeats > 1:
        runs = [_values(name, a, b, seed + r, 1, cnn_epochs) for r in range(repeats)]
        value = float(np.mean([v for v, _ in runs]))
        n = runs[0][1]["n_per_side"]
        low, high = wilson_interval(round(value * 2 * n), 2 * n)
        return value, {"low": low, "high": high, "n_per_side": n, "repeats": repeats}
    if name == "contrast":
        return float(a.std.mean() / b.std.mean()), {
            "a": float(a.std.mean()), "b": float(b.std.mean())}
    if name == "dynamic_range":
        ra, rb = float((a.p99 - a.p01).mean()), float((b.p99 - b.p01).mean())
        return ra / rb, {"a_p01": float(a.p01.mean()), "a_p99": float(a.p99.mean()),
                         "b_p01": float(b.p01.mean()), "b_p99": float(b.p99.mean())}
    if name == "exposure_spread":
        return float(a.mean.std() / max(b.mean.std(), 1e-9)), {
            "a": float(a.mean.std()), "b": float(b.mean.std())}
    if name == "brightness":
        return float((a.mean.mean() - b.mean.mean()) / max(b.mean.std(), 1e-9)), {
            "a": float(a.mean.mean()), "b": float(b.mean.mean())}
    if name == "hf_energy":  # geometric means: a few noisy scans do not set the number
        return _geo(a.hf_share) / _geo(b.hf_share), {
            "bands": {k: _geo(a.bands[k]) / _geo(b.bands[k]) for k in a.bands}}
    if name == "histogram_c2st":
        t = feature_two_sample(a.hist, b.hist, seed=seed)
    elif name == "spectrum_c2st":
        t = feature_two_sample(a.log_spectrum, b.log_spectrum, seed=seed)
    elif name == "pixel_c2st":
        t = two_sample_test(a.thumbs, b.thumbs, seed=seed)
    elif name == "cnn_c2st":
        t = cnn_two_sample_test(a.images, b.images, seed=seed, epochs=cnn_epochs)
    else:
        raise KeyError(name)
    return t.accuracy, {"low": t.low, "high": t.high, "n_per_side": t.n_per_side}


def run_probes(synthetic: np.ndarray | Summary, real: np.ndarray | Summary,
               real_b: np.ndarray | Summary | None = None, names: tuple[str, ...] | None = None,
               seed: int = 0, repeats: int = 1,
               cnn_epochs: int = CNN_EPOCHS) -> dict[str, Probe]:
    """Every probe (or ``names``) of ``synthetic`` against ``real`` images, each beside the same
    probe of ``real_b`` (other real patients) against ``real`` when given. Images are uint8
    ``[N, H, W]`` at one size (or their :func:`summarize` d form, to reuse). A two-sample test
    takes equal numbers a side, subsampling the larger set: with ``repeats`` > 1 its accuracy is
    the mean over that many subsamples (seeds ``seed``, ``seed + 1``, ...), which steadies it when
    the synthetic set is larger than the real one."""
    syn = synthetic if isinstance(synthetic, Summary) else summarize(synthetic)
    ref = real if isinstance(real, Summary) else summarize(real)
    other = None if real_b is None else (
        real_b if isinstance(real_b, Summary) else summarize(real_b))
    out: dict[str, Probe] = {}
    for name in names or tuple(SPECS):
        spec = SPECS[name]
        value, detail = _values(name, syn, ref, seed, repeats, cnn_epochs)
        score = _distance(spec.kind, value) / spec.tolerance
        rr = rr_score = None
        if other is not None:
            rr, _ = _values(name, other, ref, seed, 1, cnn_epochs)
            rr_score = _distance(spec.kind, rr) / spec.tolerance
        passed = score <= 1.0
        warning = None
        if not passed and (rr_score is None or score > rr_score + WARN_MARGIN):
            low_side = value < (1.0 if spec.kind == "ratio" else 0.0) and spec.kind != "accuracy"
            template = spec.too_low if low_side else spec.too_high
            warning = template.format(v=value, r=rr if rr is not None else float("nan"))
        out[name] = Probe(name=name, group=spec.group, kind=spec.kind, value=value, real=rr,
                          score=score, real_score=rr_score, passed=passed, warning=warning,
                          low=detail.pop("low", None), high=detail.pop("high", None),
                          n_per_side=detail.pop("n_per_side", None), detail=detail)
    return out


def realism_gap(probes: dict[str, Probe]) -> float:
    """The checkpoint rule: the worst probe's score, less its real-vs-real score (0 without one).
    Below 0: every probe is as close to real as real patients are to each other."""
    return max(p.score - (p.real_score or 0.0) for p in probes.values())


def worst(probes: dict[str, Probe]) -> str:
    """The probe that sets :func:`realism_gap`."""
    return max(probes, key=lambda k: probes[k].score - (probes[k].real_score or 0.0))


def warnings(probes: dict[str, Probe]) -> list[str]:
    return [p.warning for p in probes.values() if p.warning]
