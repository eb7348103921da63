"""Rendering of an evaluate report: the printed summary, report.html and its charts and image
grids (Pillow only, no matplotlib). :mod:`.report` computes the numbers; this module only reads
the report dictionary, so the same report renders the same way wherever it was computed.

Adding a per-class chart is one :data:`CLASS_CHARTS` entry naming the report's section and key
for each series.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .realism import TWO_SAMPLE_REPEATS


@dataclass(frozen=True)
class ClassChart:
    """A grouped bar chart over classes: series label -> (report section, key)."""

    title: str
    axis: str
    series: dict[str, tuple[str, str]]


CLASS_CHARTS = (
    ClassChart("FID per class (lower is better; baseline = real training vs real held-out)",
               "FID", {"synthetic": ("realism", "fid"), "real baseline": ("baseline", "fid")}),
    ClassChart("KID per class", "KID (mean over subsets)",
               {"synthetic": ("realism", "kid_mean"), "real baseline": ("baseline", "kid_mean")}),
    ClassChart("Label fidelity: judge accuracy for the requested class", "accuracy",
               {"synthetic": ("label_fidelity", "synthetic_accuracy"),
                "real held-out": ("label_fidelity", "real_accuracy")}),
    ClassChart("Precision (fidelity) and recall (coverage)", "precision / recall",
               {"precision": ("realism", "precision"), "recall": ("realism", "recall"),
                "baseline precision": ("baseline", "precision"),
                "baseline recall": ("baseline", "recall")}),
    ClassChart("Diversity: mean pairwise MS-SSIM (lower = more diverse)", "MS-SSIM",
               {"synthetic": ("diversity", "synthetic_ms_ssim"),
                "real": ("diversity", "real_ms_ssim")}),
    ClassChart("Memorization: share of near-copies of training images", "near-copy fraction",
               {"near-copies (augment's privacy filter)": ("memorization", "near_copy_fraction"),
                "feature-space near": ("memorization", "feature_near_fraction")}),
)


# ------------------------------------------------------------------------------------ plots
_PALETTE = [(66, 114, 196), (237, 125, 49), (112, 173, 71), (165, 165, 165), (255, 192, 0),
            (91, 155, 213), (158, 72, 14)]


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def bar_chart(title: str, categories: list[str], series: dict[str, list[float | None]],
              width: int = 760, height: int = 300) -> bytes:
    """Grouped bar chart as PNG bytes (Pillow only; missing values are left out)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 50, 10, 28, 60
    values = [v for vals in series.values() for v in vals if v is not None]
    vmax = max(values) if values else 1.0
    vmin = min(0.0, min(values)) if values else 0.0
    vmax = vmax if vmax > vmin else vmin + 1.0
    plot_h = height - top - bottom

    def y_of(v: float) -> float:
        return top + plot_h * (1 - (v - vmin) / (vmax - vmin))

    draw.text((left, 6), title, fill="black", font=font)
    draw.line([(left, top), (left, height - bottom)], fill="black")
    draw.line([(left, y_of(0)), (width - right, y_of(0))], fill="black")
    for frac in (0.0, 0.5, 1.0):
        tick = vmin + frac * (vmax - vmin)
        draw.text((2, y_of(tick) - 6), f"{tick:.3g}", fill="black", font=font)
    group_w = (width - left - right) / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for ci, name in enumerate(categories):
        x0 = left + ci * group_w + group_w * 0.1
        for si, vals in enumerate(series.values()):
            v = vals[ci]
            if v is None:
                continue
            xa = x0 + si * bar_w
            draw.rectangle([xa, min(y_of(v), y_of(0)), xa + bar_w - 1, max(y_of(v), y_of(0))],
                           fill=_PALETTE[si % len(_PALETTE)])
        draw.text((x0, height - bottom + 4), name[:14], fill="black", font=font)
    lx = left
    for si, name in enumerate(series):
        draw.rectangle([lx, height - 18, lx + 10, height - 8], fill=_PALETTE[si % len(_PALETTE)])
        draw.text((lx + 14, height - 20), name, fill="black", font=font)
        lx += 20 + 7 * len(name)
    return _png(img)


def line_chart(title: str, x: list[float], series: dict[str, list[float]],
               width: int = 760, height: int = 260) -> bytes:
    """Line chart as PNG bytes (training curves)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    left, right, top, bottom = 50, 10, 28, 40
    vals = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    if not x or not vals:
        draw.text((left, 6), f"{title}: no data", fill="black", font=font)
        return _png(img)
    vmin, vmax = min(vals), max(vals)
    vmax = vmax if vmax > vmin else vmin + 1.0
    xmin, xmax = min(x), max(x)
    xmax = xmax if xmax > xmin else xmin + 1.0

    def pt(xv: float, yv: float) -> tuple[float, float]:
        return (left + (width - left - right) * (xv - xmin) / (xmax - xmin),
                top + (height - top - bottom) * (1 - (yv - vmin) / (vmax - vmin)))

    draw.text((left, 6), title, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for v in (vmin, vmax):
        draw.text((2, pt(xmin, v)[1] - 6), f"{v:.3g}", fill="black", font=font)
    draw.text((left, height - bottom + 2), f"{xmin:g}", fill="black", font=font)
    draw.text((width - right - 30, height - bottom + 2), f"{xmax:g}", fill="black", font=font)
    lx = left
    for si, (name, ys) in enumerate(series.items()):
        color = _PALETTE[si % len(_PALETTE)]
        pts = [pt(a, b) for a, b in zip(x, ys, strict=True) if b is not None and math.isfinite(b)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        elif pts:
            draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        draw.rectangle([lx, height - 14, lx + 10, height - 4], fill=color)
        draw.text((lx + 14, height - 16), name, fill="black", font=font)
        lx += 24 + 7 * len(name)
    return _png(img)


def image_grid(rows: list[tuple[str, np.ndarray]], cell: int = 64) -> bytes:
    """Rows of uint8 images ``[k, H, W]`` with a text label on the left, as PNG bytes (the
    project's one grid drawer, :func:`cxraug.grid.labelled_grid`; short rows are padded white)."""
    from ..grid import labelled_grid

    cols = max((len(r[1]) for r in rows), default=0)
    if not rows or cols == 0:
        return _png(labelled_grid(np.full((1, 1, cell, cell), 255, np.uint8)))
    h, w = next(np.asarray(r[1]).shape[1:] for r in rows if len(r[1]))
    tiles = np.full((len(rows), cols, h, w), 255, np.uint8)
    for i, (_label, images) in enumerate(rows):
        if len(images):
            tiles[i, :len(images)] = np.asarray(images, np.uint8)
    return _png(labelled_grid(tiles, row_labels=[label[:16] for label, _ in rows],
                              min_tile=cell))


def side_by_side(real: np.ndarray, synthetic: np.ndarray, per_row: int = 6, rows: int = 6,
                 min_cell: int = 64) -> bytes:
    """Real held-out images (left) and synthetic ones drawn with the same labels (right), the
    same scale and pixel mapping, one picture: what a person compares first. Tiles keep their
    size (nearest upscaling to ``min_cell`` only for smaller images)."""
    from PIL import Image, ImageDraw

    n = min(len(real), len(synthetic), per_row * rows)
    rows = max(1, math.ceil(n / per_row))
    h, w = np.asarray(real).shape[1:3]
    scale = max(1, -(-min_cell // max(h, w)))
    th, tw, gap, head = h * scale, w * scale, 16, 16
    img = Image.new("L", (2 * per_row * (tw + 2) + gap, head + rows * (th + 2)), 255)
    draw = ImageDraw.Draw(img)
    font = _font()
    half = per_row * (tw + 2) + gap
    draw.text((2, 2), "real held-out patients", fill=0, font=font)
    draw.text((half + 2, 2), "synthetic, same labels", fill=0, font=font)
    for side, images in ((0, real), (half, synthetic)):
        for i in range(n):
            tile = Image.fromarray(np.asarray(images[i], np.uint8))
            if scale > 1:
                tile = tile.resize((tw, th), Image.Resampling.NEAREST)
            img.paste(tile, (side + (i % per_row) * (tw + 2), head + (i // per_row) * (th + 2)))
    return _png(img)


def probe_lines(o: dict[str, Any]) -> list[str]:
    """The realism probes as text rows (summary and docs): value, real-vs-real, verdict."""
    from ..probes.battery import SPECS

    probes = o.get("probes")
    if not probes:
        return []
    lines = [f"realism probes against held-out real images (n={probes['pixel_c2st']['n_per_side']}"
             " a side, label-matched; real vs real = as many training images); the checkpoint "
             f"rule's gap {o['realism_gap']:+.2f} (worst: {o.get('realism_worst')}; 0 or below = "
             "as close to real as real patients are to each other):",
             f"  {'probe':16s} {'synthetic':>18s} {'real vs real':>13s}  verdict   what"]
    for name, p in probes.items():
        shown = f"{p['value']:+.2f}" if p["kind"] == "shift" else f"{p['value']:.2f}"
        if p.get("low") is not None:
            shown += f" ({p['low']:.2f}-{p['high']:.2f})"
        real = "" if p["real"] is None else (
            f"{p['real']:+.2f}" if p["kind"] == "shift" else f"{p['real']:.2f}")
        lines.append(f"  {name:16s} {shown:>18s} {real:>13s}  "
                     f"{'ok' if p['passed'] else 'FAILS':7s}   {SPECS[name].describe}")
    return lines


def pairs_image(pairs: list[tuple[str, np.ndarray, np.ndarray]], cell: int = 64) -> bytes:
    """Synthetic | nearest training image pairs, captioned, as PNG bytes."""
    from PIL import Image, ImageDraw

    per_row = 4
    n_rows = max(1, math.ceil(len(pairs) / per_row))
    pw, ph = 2 * cell + 12, cell + 18
    img = Image.new("RGB", (per_row * pw, n_rows * ph), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    for i, (caption, syn, real) in enumerate(pairs):
        x, y = (i % per_row) * pw, (i // per_row) * ph
        for k, tile in enumerate((syn, real)):
            pic = Image.fromarray(np.asarray(tile, np.uint8)).resize((cell, cell),
                                                                      Image.Resampling.NEAREST)
            img.paste(pic.convert("RGB"), (x + k * (cell + 2), y))
        draw.text((x, y + cell + 2), caption[:24], fill="black", font=font)
    return _png(img)


def _epoch_curves(cols: dict[str, list[float]]) -> tuple[list[float], dict[str, list[float]]]:
    """Mean of each metric per epoch (metrics.csv may hold several rows per epoch)."""
    if "epoch" not in cols:
        return [], {}
    epochs = np.asarray(cols["epoch"])
    xs = sorted({e for e in epochs.tolist() if math.isfinite(e)})
    out: dict[str, list[float]] = {}
    for key in ("d_loss", "g_loss", "d_acc_real", "d_acc_fake"):
        if key in cols:
            vals = np.asarray(cols[key])
            out[key] = [float(np.nanmean(vals[epochs == e])) if np.isfinite(
                vals[epochs == e]).any() else float("nan") for e in xs]
    return xs, out



# ------------------------------------------------------------------------------------ text
def summary_text(r: dict[str, Any], out: Path) -> str:
    """What ``cxraug evaluate`` prints: the headline numbers, a per-class table, the warnings."""
    o = r["overall"]

    def f(v: Any, fmt: str = ".3f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [f"report: {out / 'report.html'} (numbers in {out / 'report.json'})",
             f"{len(r['classes'])} classes, {r['n_per_class']} synthetic images per class, "
             f"held-out real split '{r['split']}'"]
    test, real = o.get("two_sample"), o.get("two_sample_real")
    if test:
        lines.append(
            f"realism: a classifier tells synthetic from held-out real images "
            f"{test['accuracy']:.2f} of the time (95% CI {test['low']:.2f}-{test['high']:.2f},"
            f" n={test['n_per_side']} a side; 0.50 = indistinguishable); two sets of real "
            f"patients: {f(real and real['accuracy'], '.2f')}")
        lines.append(f"diversity: synthetic images vary {o['pixel_diversity_ratio']:.2f}x as "
                     "much as held-out real ones (1.00 = as varied)")
        lines += probe_lines(o)
    else:
        lines.append(f"realism two-sample test: {o.get('two_sample_note')}")
    lines.append(f"{'class':20s} {'FID syn/base':>14s} {'KID syn/base':>16s} "
                 f"{'acc syn/real':>13s} {'P/R':>10s} {'MS-SSIM s/r':>12s} {'copies':>7s}")

    def feature_cols(real: dict[str, Any], base: dict[str, Any]) -> tuple[str, str, str]:
        if real.get("note"):
            return (f"{real['note']:>31s}", "", "")
        return (f"{f(real['fid'], '.3g'):>6s}/{f(base['fid'], '.3g'):<7s}",
                f"{f(real['kid_mean'], '.2g'):>7s}/{f(base['kid_mean'], '.2g'):<8s}",
                f"{f(real['precision'], '.2f'):>4s}/{f(real['recall'], '.2f'):<5s}")

    for name, c in r["classes"].items():
        lab = c["label_fidelity"]
        fid_s, kid_s, pr_s = feature_cols(c["realism"], c["baseline"])
        pr_s = pr_s or f"{'':10s}"
        lines.append(
            f"{name[:20]:20s} {fid_s}{' ' + kid_s if kid_s else ''}"
            f" {f(lab['synthetic_accuracy'], '.2f'):>6s}/{f(lab['real_accuracy'], '.2f'):<6s}"
            f" {pr_s}"
            f" {f(c['diversity']['synthetic_ms_ssim'], '.2f'):>5s}/"
            f"{f(c['diversity']['real_ms_ssim'], '.2f'):<6s}"
            f" {c['memorization']['near_copies']:>7d}")
    fid_s, kid_s, pr_s = feature_cols(
        {"note": None if o["fid"] is not None else "too few held-out images per class",
         "fid": o["fid"], "kid_mean": o["kid_mean"], "precision": o["precision"],
         "recall": o["recall"]},
        {"fid": o["baseline_fid"], "kid_mean": o["baseline_kid_mean"]})
    lines.append(
        f"{'macro mean':20s} {fid_s}{' ' + kid_s if kid_s else ''}"
        f" {f(o['synthetic_accuracy'], '.2f'):>6s}/{f(o['real_accuracy'], '.2f'):<6s}"
        f" {pr_s or f'{chr(32) * 10}'}"
        f" {f(o['synthetic_ms_ssim'], '.2f'):>5s}/{f(o['real_ms_ssim'], '.2f'):<6s}"
        f" {o['near_copies']:>7d}")
    if o.get("privacy_filter_fraction") is not None:
        rule = r["memorization_reference"]["privacy_filter_rule"]
        lines.append(f"augment's privacy filter would replace "
                     f"{o['privacy_filter_fraction']:.1%} of these images ({rule})")
    lines.append(f"label change with the same z (paper Fig. 9), relative to a new z: pixels "
                 f"{f(o['label_swap_pixel_ratio'], '.2f')}, features "
                 f"{f(o['label_swap_feature_ratio'], '.2f')}")
    for flag in r["flags"]:
        lines.append(f"! {flag}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ html
def charts(report: dict[str, Any], classes: list[str],
            run_cols: dict[str, list[float]] | None) -> list[tuple[str, bytes]]:
    per = report["classes"]

    def col(section: str, key: str) -> list[float | None]:
        return [per[c][section].get(key) for c in classes]

    charts = [(c.title, bar_chart(c.axis, classes, {label: col(section, key) for label, (
        section, key) in c.series.items()})) for c in CLASS_CHARTS]
    if run_cols is not None:
        xs, curves = _epoch_curves(run_cols)
        losses = {k: v for k, v in curves.items() if k.endswith("loss")}
        accs = {k: v for k, v in curves.items() if k.startswith("d_acc")}
        charts.insert(0, ("Training curves: losses per epoch", line_chart("loss", xs, losses)))
        charts.insert(1, ("Training curves: discriminator accuracy per epoch",
                          line_chart("D accuracy", xs, accs)))
    return charts


def _interval(t: dict[str, Any] | None) -> str:
    return "n/a" if not t else f"{t['accuracy']:.3f} ({t['low']:.2f}-{t['high']:.2f})"


@dataclass(frozen=True)
class HtmlTable:
    """One section's table in report.html: a heading, a paragraph (HTML, from the report), one
    row per class (the class name, then ``columns``' values read from that class's entry of
    ``report["classes"]``) and rows before and after them (overall rows). A new metric's table
    is one entry of :data:`HTML_TABLES`."""

    heading: str
    intro: Callable[[dict[str, Any]], str]
    columns: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]
    before: Callable[[dict[str, Any]], list[list[Any]]] = lambda r: []
    after: Callable[[dict[str, Any]], list[list[Any]]] = lambda r: []
    first_column: str = "class"


def _two_sample_intro(r: dict[str, Any]) -> str:
    return ("<h2>Realism: can a classifier tell synthetic from real?</h2><p>A classifier "
            "two-sample test: logistic regression on per-image standardized 32x32 pixels, 5-fold "
            "cross-validated, equal numbers of synthetic and held-out real images (mean of "
            f"{TWO_SAMPLE_REPEATS} synthetic draws; 95% interval). 0.5 = indistinguishable, 1.0 = "
            "always told apart. Beside it the same test between real training images and the "
            "held-out ones: two sets of real patients. Pixel diversity: mean distance between "
            "synthetic images over that between real ones (1 = as varied; per class against "
            "real training images of the class).</p>")


def _two_sample_all(r: dict[str, Any]) -> list[list[Any]]:
    o = r["overall"]
    test, real_test = o.get("two_sample"), o.get("two_sample_real")
    return [["all held-out images (label-matched)", test["n_per_side"] if test else "",
             _interval(test), _interval(real_test), o.get("pixel_diversity_ratio"),
             o.get("two_sample_note") or ""]]


def _realism_mean(r: dict[str, Any]) -> list[list[Any]]:
    o = r["overall"]
    return [["macro mean", "", "", o["fid"], o["baseline_fid"], o["kid_mean"], "",
             o["baseline_kid_mean"], o["precision"], o["recall"], o["baseline_precision"],
             o["baseline_recall"], f"classes with at least {r['min_heldout']} held-out images"]]


def _label_overall(r: dict[str, Any]) -> list[list[Any]]:
    o = r["overall"]
    return [["overall", "", o["synthetic_auroc"], o["real_auroc"], o["synthetic_accuracy"],
             o["real_accuracy"], o["label_swap_pixel_ratio"], o["label_swap_feature_ratio"]]]


def _memorization_intro(r: dict[str, Any]) -> str:
    ref = r["memorization_reference"]
    return ("<h2>Memorization</h2>\n"
            f"<p>Near-copies: {html.escape(ref['near_copy_rule'])}; the share `cxraug augment` "
            "would replace. Beside it, full-size pixels: nearest-training distance of the "
            f"held-out images, median {_fmt(ref['heldout_to_train_pixel_median'])} "
            f"({ref['n_heldout']} held-out images); ratios: synthetic distance / that median. "
            "Feature-near: closer in features than the 1st percentile of the held-out images."
            "</p>")


def _get(section: str, key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda v: v[section].get(key)


HTML_TABLES: tuple[HtmlTable, ...] = (
    HtmlTable("two_sample", _two_sample_intro, (
        ("N held-out", lambda v: v["n_real_heldout"]),
        ("synthetic vs real", lambda v: _interval(v["two_sample"]["synthetic"])),
        ("real vs real", lambda v: _interval(v["two_sample"]["real_vs_real"])),
        ("pixel diversity", _get("diversity", "pixel_ratio")),
        ("note", lambda v: v["two_sample"].get("note") or "")),
        before=_two_sample_all, first_column="set"),
    HtmlTable("realism", lambda r: (
        "<h2>Realism (feature space)</h2><p>Synthetic vs held-out real images of each class; "
        "the baseline is as many real training images against the same held-out images: what a "
        "perfect generator would score at this N. FID is biased upwards at small N.</p>"), (
        ("N syn", lambda v: v["n_synthetic"]), ("N real", lambda v: v["n_real_heldout"]),
        ("FID", _get("realism", "fid")), ("FID base", _get("baseline", "fid")),
        ("KID", _get("realism", "kid_mean")), ("KID std", _get("realism", "kid_std")),
        ("KID base", _get("baseline", "kid_mean")),
        ("precision", _get("realism", "precision")), ("recall", _get("realism", "recall")),
        ("P base", _get("baseline", "precision")), ("R base", _get("baseline", "recall")),
        ("note", lambda v: v["realism"].get("note") or "")), after=_realism_mean),
    HtmlTable("label_fidelity", lambda r: (
        "<h2>Label fidelity</h2><p>The judge's AUROC and accuracy (its decision, the class with "
        "the highest probability / training prevalence, is the requested class) on synthetic vs "
        "held-out real images. Judge val AUROC: how well the judge recognizes the class in real "
        "validation images; near 0.5 its verdicts mean little. Swap ratio: distance between "
        "G(z, c) and G(z, other class) relative to the distance between two z of class c.</p>"), (
        ("judge val AUROC", _get("label_fidelity", "judge_val_auroc")),
        ("AUROC syn", _get("label_fidelity", "synthetic_auroc")),
        ("AUROC real", _get("label_fidelity", "real_auroc")),
        ("acc syn", _get("label_fidelity", "synthetic_accuracy")),
        ("acc real", _get("label_fidelity", "real_accuracy")),
        ("swap ratio px", _get("label_fidelity", "label_swap_pixel_ratio")),
        ("swap ratio feat", _get("label_fidelity", "label_swap_feature_ratio"))),
        after=_label_overall),
    HtmlTable("diversity", lambda r: (
        "<h2>Diversity</h2><p>Mean pairwise MS-SSIM within each class (lower = more "
        "diverse).</p>"), (
        ("synthetic", _get("diversity", "synthetic_ms_ssim")),
        ("real", _get("diversity", "real_ms_ssim")),
        ("pairs", _get("diversity", "synthetic_pairs")))),
    HtmlTable("memorization", _memorization_intro, (
        ("near-copies", _get("memorization", "near_copies")),
        ("fraction", _get("memorization", "near_copy_fraction")),
        ("feature-near fraction", _get("memorization", "feature_near_fraction")),
        ("min px distance", _get("memorization", "pixel_distance_min")),
        ("px ratio (median)", _get("memorization", "pixel_ratio_median")),
        ("feature ratio (median)", _get("memorization", "feature_ratio_median")))),
)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(t: HtmlTable, report: dict[str, Any]) -> str:
    rows = t.before(report) + [[c, *(get(v) for _, get in t.columns)]
                               for c, v in report["classes"].items()] + t.after(report)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in [t.first_column, *(h for h, _ in t.columns)])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _probes_html(report: dict[str, Any], side: bytes | None, img: Callable[[bytes, str], str],
                 ) -> str:
    """The realism probes' table and the side-by-side picture."""
    from ..probes.battery import SPECS

    o = report["overall"]
    probes = o.get("probes")
    if not probes:
        return ""
    rows = []
    for name, p in probes.items():
        value = _fmt(p["value"]) + (f" ({p['low']:.2f}-{p['high']:.2f})"
                                    if p.get("low") is not None else "")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{value}</td><td>{_fmt(p['real'])}"
                    f"</td><td>{'ok' if p['passed'] else '<b>fails</b>'}</td><td style="
                    f"'text-align:left'>{html.escape(SPECS[name].describe)}</td></tr>")
    return ("<h2>Realism probes: what a person sees</h2><p>Every held-out real image the "
            "generator can label against a synthetic image drawn with its labels (n="
            f"{probes['pixel_c2st']['n_per_side']} a side); beside each probe the same between as "
            "many real training images and the held-out ones (two sets of real patients). "
            "Ratios: 1 = like real (contrast, grey-level range and fine detail fail outside "
            "0.9-1.1, exposure spread outside 0.8-1.25); two-sample accuracies: 0.5 = "
            "indistinguishable (histograms and spectra fail above 0.70, the CNN above 0.80, "
            f"pixels above 0.65). The rule that picks checkpoints: gap "
            f"{o['realism_gap']:+.2f} (worst: {html.escape(str(o.get('realism_worst')))}); 0 or "
            "below = as close to real as real patients are to each other. docs/EVALUATION.md "
            "says how each is measured.</p><table><tr><th>probe</th><th>synthetic</th><th>real "
            "vs real</th><th>verdict</th><th>what it measures</th></tr>" + "".join(rows) +
            "</table>" + (img(side, "real and synthetic side by side") if side else ""))


def html_report(report: dict[str, Any], charts: list[tuple[str, bytes]], samples: bytes,
                real: bytes, swap: bytes, pairs: bytes, side: bytes | None = None) -> str:
    """report.html: every section's table (:data:`HTML_TABLES`), the charts and the image grids,
    images inlined (one file)."""
    def img(data: bytes, alt: str) -> str:
        return (f'<img alt="{html.escape(alt)}" src="data:image/png;base64,'
                f'{base64.b64encode(data).decode()}">')

    flags = "".join(f"<li>{html.escape(f)}</li>" for f in report["flags"]) or \
        "<li>no warnings</li>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cxraug evaluation</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;"
        "padding:2px 6px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "img{margin:4px 0;max-width:100%}</style></head><body>",
        "<h1>cxraug evaluation report</h1>",
        f"<p>generator <code>{_fmt(report['generator'])}</code>, data <code>"
        f"{_fmt(report['data'])}</code>, held-out split <b>{_fmt(report['split'])}</b>, "
        f"{report['n_per_class']} synthetic images per class, feature model "
        f"<code>{_fmt(report['classifier'])}</code>, seed {report['seed']}, created "
        f"{_fmt(report['created'])}. How to read it: docs/EVALUATION.md.</p>",
        f"<h2>Warnings</h2><ul>{flags}</ul>", f"<ul>{notes}</ul>" if notes else "",
        _probes_html(report, side, img),
    ]
    for table in HTML_TABLES:
        parts += [table.intro(report), _table(table, report)]
    parts += ["<h3>Closest synthetic / training pairs</h3>", img(pairs, "nearest pairs"),
              "<h2>Plots</h2>"]
    for title, png in charts:
        parts += [f"<h3>{html.escape(title)}</h3>", img(png, title)]
    parts += ["<h2>Samples</h2><p>Synthetic (rows = classes)</p>", img(samples, "samples"),
              "<p>Real held-out</p>", img(real, "real"),
              "<p>Same z (columns), different label (rows): paper Fig. 9</p>",
              img(swap, "label swap"), "</body></html>"]
    return "\n".join(parts)
