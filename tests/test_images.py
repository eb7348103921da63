"""Image lookup under a data root (escape-safe) and decoding to 8-bit gray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cxraug.data.images import index_images, load_gray, unsafe_name_reason
from cxraug.errors import CxrError


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array, mode=mode)
    image.save(path)
    return path


def gray(seed: int = 0, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(side, side), dtype=np.uint8)


# ------------------------------------------------------------------------------------ lookup
def test_index_finds_nested_folders_and_rejects_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a = save(root / "images_001" / "images" / "00000001_000.png", gray(1))
    save(root / "images_012" / "images" / "00000002_000.png", gray(2))
    (root / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("not an image")
    outside = save(tmp_path / "outside" / "00000003_000.png", gray(3))
    os.symlink(outside, root / "00000003_000.png")  # file symlink out of the root
    os.symlink(tmp_path / "outside", root / "linked_out")  # folder symlink out of the root
    os.symlink(a, root / "00000004_000.png")  # symlink inside the root: fine
    os.symlink(root / "images_001", root / "images_001" / "loop")  # a loop is visited once

    index = index_images(root)
    assert set(index.paths) == {"00000001_000.png", "00000002_000.png", "00000004_000.png"}
    assert index.lookup("00000002_000.png")[0].endswith("images_012/images/00000002_000.png")
    path, reason = index.lookup("00000003_000.png")
    assert path is None and "outside the data root" in reason
    for name, expect in [
        ("../outside/00000003_000.png", "'..'"),
        (str(outside), "absolute"),
        ("images_001/images/00000001_000.png", "bare file name"),
        ("..", "not a file name"),
        ("C:\\data\\00000001_000.png", "absolute"),
        ("00000009_000.png", "missing"),
    ]:
        path, reason = index.lookup(name)
        assert path is None and expect in reason, (name, reason)
    assert unsafe_name_reason("00000001_000.png") == ""


def test_index_errors_and_duplicates(tmp_path: Path) -> None:
    with pytest.raises(CxrError, match="not found"):
        index_images(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CxrError, match="not a folder"):
        index_images(tmp_path / "file")
    save(tmp_path / "r" / "b" / "x.png", gray(1))
    save(tmp_path / "r" / "a" / "x.png", gray(2))
    index = index_images(tmp_path / "r")
    assert index.paths["x.png"].endswith("a/x.png") and len(index.duplicates["x.png"]) == 2


# ---------------------------------------------------------------------------------- decoding
def test_gray_identity_and_resize_antialiasing(tmp_path: Path) -> None:
    img = gray(5, 64)
    assert (load_gray(save(tmp_path / "g.png", img), 64) == img).all()
    # a one-pixel checkerboard averaged down must be flat mid-gray, not aliased stripes
    board = (np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = load_gray(save(tmp_path / "board.png", board), 32)
    assert small.shape == (32, 32) and small.dtype == np.uint8
    assert abs(float(small.mean()) - 127.5) < 2 and small.std() < 2
    # non-square inputs become square
    assert load_gray(save(tmp_path / "wide.png", gray(6, 64)[:32]), 16).shape == (16, 16)


def test_rgba_rgb_la_palette(tmp_path: Path) -> None:
    img = gray(7, 48)
    alpha = np.random.default_rng(8).integers(0, 256, size=img.shape, dtype=np.uint8)
    rgba = np.stack([img, img, img, alpha], axis=-1)
    assert (load_gray(save(tmp_path / "rgba.png", rgba), 48) == img).all()  # alpha ignored
    la = np.stack([img, alpha], axis=-1)
    assert (load_gray(save(tmp_path / "la.png", la, "LA"), 48) == img).all()
    color = np.random.default_rng(9).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    expect = color.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    got = load_gray(save(tmp_path / "rgb.png", color), 48).astype(np.float64)
    assert np.abs(got - expect).max() <= 1.0
    palette = Image.fromarray(img).convert("P")
    palette.save(tmp_path / "p.png")
    assert (load_gray(tmp_path / "p.png", 48) == img).all()


def test_sixteen_bit_uses_the_real_range(tmp_path: Path) -> None:
    ramp = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_gray(path, 64)
    expect = np.rint((ramp.astype(np.float64) - 1000) * 255 / 4000)
    assert out.min() == 0 and out.max() == 255  # not clipped at 255, not crushed to 3..19
    assert np.abs(out - expect).max() <= 1
    assert np.all(np.diff(out.reshape(-1).astype(int)) >= 0)
    # 32-bit integer mode too, and a constant image does not divide by zero
    Image.fromarray(np.full((8, 8), 70000, dtype=np.int32), mode="I").save(tmp_path / "i32.tif")
    assert (load_gray(tmp_path / "i32.tif", 8) == 0).all()


def test_truncated_and_corrupt_raise(tmp_path: Path) -> None:
    good = save(tmp_path / "good.png", gray(10, 256))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    start = data.index(b"IDAT") + 40
    corrupt[start: start + 200] = bytes(200)
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    (tmp_path / "text.png").write_text("not a png")
    for name in ("trunc.png", "corrupt.png", "text.png"):
        with pytest.raises(Exception):  # noqa: B017 - any decoder error is a skip for the caller
            load_gray(tmp_path / name, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
            load_gray(tmp_path / "trunc.png", 64)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_nih_sample_rgba_images(nih_sample: Path) -> None:
    index = index_images(nih_sample)
    assert len(index) == 401
    rgba = []
    for path in sorted(index.paths.values()):
        with Image.open(path) as im:
            if im.mode == "RGBA":
                rgba.append(path)
    assert len(rgba) >= 1
    for path in rgba[:2]:
        channels = np.asarray(Image.open(path))
        out = load_gray(path, 1024)
        assert out.dtype == np.uint8 and (out == channels[..., 0]).all()
        small = load_gray(path, 128)
        assert small.shape == (128, 128)
        assert abs(float(small.mean()) - float(channels[..., 0].mean())) < 1.0
