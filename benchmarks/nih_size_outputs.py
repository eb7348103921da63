"""Benchmark: ``augment --output-size 1024`` (NIH's own size) against the PNG-encode limit.

At 1024x1024 a 64x64 generator's inference is a small part of the work; each image is resized
(Lanczos, in float, one rounding) and PNG-encoded. The limit measured here, in the same run, is
encoding the very images augment writes on every core at once (threads: both DEFLATEs release
the GIL) and nothing else: with zlib (level 1, run-length; the issue's limit) and with augment's
own DEFLATE (ISA-L where installed). Beside it: the resize + quantization alone (and the float64
way augment used before), and the whole ``augment`` call. Then the encoder settings, one thread
each: bytes per image against milliseconds per image for zlib levels 1/3/6/9 with the Up filter
and the run-length or default strategy, ISA-L levels 0-3, and Pillow's own encoder.
NIH's own 1024x1024 PNGs are ~300-450 KB (the sample's sizes are printed when it is there).

    python benchmarks/nih_size_outputs.py [--per-class 40] [--size 1024] [--model FILE.onnx]

The encode limit and the per-step costs are measured on the first 120 images (held in memory);
augment makes ``--per-class`` x classes images (its start-up, ~0.5 s, is then a small part).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "nih-sample"


def _encode_all(images: list[np.ndarray], workers: int, **kw: object) -> float:
    """Images/s encoding ``images`` with augment's encoder on ``workers`` threads."""
    from cxraug.synthesis.png import encode_png

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda im: encode_png(im, **kw), images))
    return len(images) / (time.perf_counter() - start)


def _settings(images: list[np.ndarray]) -> list[tuple[str, float, float]]:
    """(setting, KB per image, ms per image on one thread) for each encoder setting."""
    import PIL.Image

    import cxraug.synthesis.png as A

    rows = []
    for level in (1, 3, 6, 9):
        for strategy, name in ((zlib.Z_RLE, "rle"), (zlib.Z_DEFAULT_STRATEGY, "default")):
            old = A.PNG_STRATEGY
            A.PNG_STRATEGY = strategy
            try:
                start = time.perf_counter()
                sizes = [len(A.encode_png(im, level=level, deflate="zlib")) for im in images]
                ms = (time.perf_counter() - start) / len(images) * 1e3
            finally:
                A.PNG_STRATEGY = old
            rows.append((f"Up filter, zlib {level}, {name}", float(np.mean(sizes)) / 1e3, ms))
    if A._isal is not None:
        for level in (0, 1, 2, 3):
            start = time.perf_counter()
            sizes = [len(A.encode_png(im, level=level, deflate="isal")) for im in images]
            mark = " (--png-deflate isal)" if level == A.ISAL_LEVEL else ""
            rows.append((f"Up filter, ISA-L {level}{mark}",
                         float(np.mean(sizes)) / 1e3,
                         (time.perf_counter() - start) / len(images) * 1e3))
    start = time.perf_counter()
    sizes = []
    for im in images:
        buf = io.BytesIO()
        PIL.Image.fromarray(im).save(buf, format="PNG")  # Pillow's default: adaptive, level 6
        sizes.append(buf.tell())
    rows.append(("Pillow default (adaptive filter, zlib 6)", float(np.mean(sizes)) / 1e3,
                 (time.perf_counter() - start) / len(images) * 1e3))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from cxraug.grid import to_uint8
    from cxraug.inference.generator import DEFAULT_MODEL, OnnxGenerator
    from cxraug.synthesis.augment import augment, lanczos_matrix, latents, resize_to_uint8

    def float64_way(image: np.ndarray, size: int) -> np.ndarray:
        """What augment did before resize_to_uint8: Pillow's numbers in float64, then
        to_uint8 (kept here as the side-by-side baseline)."""
        h, w = image.shape
        across = np.asarray(image, np.float64) @ lanczos_matrix(w, size).T
        return to_uint8((lanczos_matrix(h, size) @ across.astype(np.float32).astype(
            np.float64)).astype(np.float32))

    model = args.model or DEFAULT_MODEL
    cores = os.cpu_count() or 1
    gen = OnnxGenerator(model, device="cpu", spinning=False)  # as augment runs it
    total = args.per_class * len(gen.class_names)
    n = min(total, 120)
    print(f"cores {cores}, load average {os.getloadavg()[0]:.1f}, model {model} "
          f"({gen.image_size}x{gen.image_size}), {total} images at {args.size}x{args.size}, "
          f"best of {args.repeats}")
    # the images augment writes: generated, resized in float, rounded once
    hot = np.zeros((n, len(gen.class_names)), np.float32)
    hot[np.arange(n), np.arange(n) % len(gen.class_names)] = 1
    labels = hot if gen.label_mode == "multi-hot" else np.arange(n) % len(gen.class_names)
    raw = gen.generate(latents(0, 0, range(n), gen.latent_dim), labels)
    from cxraug.blas import one_blas_thread

    resize_to_uint8(raw[0], args.size)  # the Lanczos matrices are built once per size
    float64_way(raw[0], args.size)
    with one_blas_thread():  # as augment's writer threads resize
        start = time.perf_counter()
        images = [resize_to_uint8(im, args.size) for im in raw]
        resize_ms = (time.perf_counter() - start) / n * 1e3
        start = time.perf_counter()
        before = [float64_way(im, args.size) for im in raw]
        before_ms = (time.perf_counter() - start) / n * 1e3
    differ = float(np.mean([np.mean(a != b) for a, b in zip(images, before, strict=True)]))

    from cxraug.synthesis import png

    isal = png._isal is not None  # augment --png-deflate isal (pip install 'cxraug[fast-png]')
    best: dict[str, float] = {}
    kb: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            best["limit"] = max(best.get("limit", 0.0), _encode_all(images, cores,
                                                                    deflate="zlib"))
            if isal:
                best["isal"] = max(best.get("isal", 0.0), _encode_all(images, cores,
                                                                      deflate="isal"))
            for deflate in ("zlib", "isal") if isal else ("zlib",):
                out = Path(tmp) / "aug"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                result = augment(model=model, out=out, per_class=args.per_class,
                                 output_size=args.size, device="cpu", progress=False,
                                 privacy_filter=False, png_deflate=deflate)
                key = f"augment {deflate}"
                best[key] = max(best.get(key, 0.0),
                                result.generated / (time.perf_counter() - start))
                written = sorted((out / "images").glob("*.png"))
                kb[deflate] = float(np.mean([p.stat().st_size for p in written])) / 1e3
    one = _encode_all(images, 1, deflate="zlib")
    print(f"PNG-encode limit (Up filter, zlib 1 RLE, {cores} threads, encoding only): "
          f"{best['limit']:.1f} img/s ({one:.1f} on one thread)"
          + (f"; with ISA-L: {best['isal']:.1f} img/s" if isal else ""))
    rest = resize_ms
    print(f"per image on one thread: resize {gen.image_size}->{args.size} + quantize "
          f"(resize_to_uint8, float32) {resize_ms:.2f} ms (the float64 way before it: "
          f"{before_ms:.2f} ms; pixels one level apart: {differ:.1e}), encode {1e3 / one:.1f} ms:"
          f" the encode-only limit leaves out {rest / (rest + 1e3 / one):.0%} of that work")
    for deflate in kb:
        rate = best[f"augment {deflate}"]
        print(f"augment --output-size {args.size} --png-deflate {deflate}: {rate:.1f} img/s, "
              f"{kb[deflate]:.0f} KB per image; ratio to the zlib encode-only limit "
              f"{rate / best['limit']:.2f}"
              + (f", to ISA-L's {rate / best['isal']:.2f}" if isal else ""))
    print(f"{'encoder setting (one thread)':44s} {'KB/img':>8s} {'ms/img':>8s}")
    for name, size_kb, ms in _settings(images[:min(len(images), 24)]):
        print(f"{name:44s} {size_kb:8.0f} {ms:8.1f}")
    if (SAMPLE / "Data_Entry_2017.csv").is_file():
        sizes = [p.stat().st_size for p in sorted(SAMPLE.rglob("*.png"))[:200]]
        print(f"NIH's own PNGs ({len(sizes)} of the sample): median {np.median(sizes) / 1e3:.0f} "
              f"KB (10-90%: {np.percentile(sizes, 10) / 1e3:.0f}-"
              f"{np.percentile(sizes, 90) / 1e3:.0f} KB)")
    print(f"load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
