"""Reading images: every kind of bad or unusual file gets its named outcome (converted or a reason)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainwise.data import images
from trainwise.data.images import ImageProblem, dhash, read_image, resize

LIMIT = 5_000_000


def rgb(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def problem(path: Path, channels: int = 3) -> ImageProblem:
    with pytest.raises(ImageProblem) as caught:
        read_image(path, channels=channels, max_pixels=LIMIT)
    return caught.value


def test_plain_rgb_and_grey_conversions(tmp_path: Path) -> None:
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    pixels, info = read_image(tmp_path / "a.png", channels=3, max_pixels=LIMIT)
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    assert (pixels == rgb()).all()
    assert info.width == 30 and info.height == 20 and info.mode == "RGB" and info.format == "PNG" and len(info.sha256) == 64
    grey, _ = read_image(tmp_path / "a.png", channels=1, max_pixels=LIMIT)
    assert grey.shape == (20, 30, 1)
    Image.fromarray(rgb()[:, :, 0]).save(tmp_path / "g.png")
    replicated, _ = read_image(tmp_path / "g.png", channels=3, max_pixels=LIMIT)
    assert (replicated[:, :, 0] == replicated[:, :, 2]).all()


def test_truncated_jpeg_is_quarantined(tmp_path: Path) -> None:
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert problem(tmp_path / "cut.jpg").reason == images.TRUNCATED


def test_html_page_saved_as_jpg_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "page.jpg").write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    found = problem(tmp_path / "page.jpg")
    assert found.reason == images.NOT_AN_IMAGE
    assert "HTML page" in found.detail and "page.jpg" in found.detail


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert problem(tmp_path / "empty.png").reason == images.EMPTY


def test_missing_file(tmp_path: Path) -> None:
    assert problem(tmp_path / "gone.png").reason == images.MISSING


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    pixels, info = read_image(tmp_path / "deep.png", channels=1, max_pixels=LIMIT)
    assert info.mode.startswith("I;16")
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]  # clipping would give [0, 255, 255, 255]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    pixels, info = read_image(tmp_path / "alpha.png", channels=3, max_pixels=LIMIT)
    assert info.mode == "RGBA" and info.channels == 4
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[3, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), dtype=np.uint8)).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    pixels, info = read_image(tmp_path / "print.jpg", channels=3, max_pixels=LIMIT)
    assert info.mode == "CMYK"
    assert pixels.shape == (8, 8, 3)
    red, green, blue = pixels[4, 4].astype(int)
    assert red > 150 and green < 80 and blue < 80


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(rgb(20, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    pixels, info = read_image(tmp_path / "phone.jpg", channels=3, max_pixels=LIMIT)
    assert pixels.shape == (30, 20, 3)
    assert (info.width, info.height) == (20, 30)


def test_palette_image(tmp_path: Path) -> None:
    Image.fromarray(rgb()).convert("P").save(tmp_path / "pal.png")
    pixels, info = read_image(tmp_path / "pal.png", channels=3, max_pixels=LIMIT)
    assert info.mode == "P" and pixels.shape == (20, 30, 3)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    Image.new("L", (3000, 2000)).save(tmp_path / "huge.png")
    found = problem(tmp_path / "huge.png")
    assert found.reason == images.TOO_LARGE and "6,000,000 pixels" in found.detail


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png")  # tiny file, 144 million pixels
    with pytest.raises(ImageProblem) as caught:
        read_image(tmp_path / "bomb.png", channels=1, max_pixels=10**10)
    assert caught.value.reason == images.TOO_LARGE


def test_float_image_is_an_unsupported_mode(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).random((5, 5)).astype(np.float32)).save(tmp_path / "f.tif")
    assert problem(tmp_path / "f.tif").reason == images.UNSUPPORTED_MODE


def test_dhash_is_close_for_a_resized_copy_and_far_for_another_image() -> None:
    base = np.kron(rgb(8, 8, seed=1), np.ones((8, 8, 1), dtype=np.uint8))  # 64x64 blocks
    copy = resize(base, (48, 48))
    other = np.kron(rgb(8, 8, seed=2), np.ones((8, 8, 1), dtype=np.uint8))
    assert (dhash(base) ^ dhash(copy)).bit_count() <= 4
    assert (dhash(base) ^ dhash(other)).bit_count() > 10


def test_resize_keeps_the_channel_axis() -> None:
    assert resize(np.zeros((10, 12, 1), np.uint8), (4, 5)).shape == (4, 5, 1)
    assert resize(np.zeros((10, 12, 3), np.uint8), (20, 24)).shape == (20, 24, 3)


def test_jpeg_cut_inside_its_header_is_truncated(tmp_path: Path) -> None:
    Image.fromarray(rgb(64, 64)).save(tmp_path / "full.jpg")
    (tmp_path / "header.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    assert problem(tmp_path / "header.jpg").reason == images.TRUNCATED
