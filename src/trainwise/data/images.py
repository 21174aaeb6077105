"""Reading one image robustly: hash and decode from a single read, explicit conversions, clear problems.

Every image a step sees goes through `read_image`: the bytes are read once, hashed (sha256), then
decoded from memory. Conversions are explicit so that what the network sees does not depend on
what Pillow happens to do: EXIF orientation is applied; 16-bit images are scaled to 8 bits (not
clipped); palette, grey, grey+alpha, RGBA and CMYK are converted to the project's channels, with
transparency composited over white. Anything unusable raises ImageProblem with a short reason code
that the quarantine list records.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Reasons an image is quarantined (the `reason` column of quarantine.csv).
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
TOO_LARGE = "too_many_pixels"
UNSUPPORTED_MODE = "unsupported_mode"
MISSING = "missing_file"

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


class ImageProblem(Exception):
    """An image that cannot be used; `reason` is one of the codes above, `detail` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    """What ingest records about one file (before resizing)."""

    sha256: str
    dhash: str  # 64-bit difference hash of the decoded image, 16 hex digits
    width: int
    height: int
    mode: str  # Pillow mode of the file as stored (L, RGB, P, I;16, CMYK, ...)
    channels: int  # bands in the file as stored
    bytes: int
    format: str  # PNG, JPEG, ...


def read_image(path: Path, *, channels: int, max_pixels: int) -> tuple[np.ndarray, ImageInfo]:
    """Read, hash and decode one image file into a (H, W, channels) uint8 array."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageProblem(MISSING, f"{path} does not exist") from None
    except OSError as exc:
        raise ImageProblem(UNREADABLE, f"{path}: {exc.strerror or exc}") from None
    return decode_image(data, channels=channels, max_pixels=max_pixels, name=str(path))


def decode_image(data: bytes, *, channels: int, max_pixels: int, name: str = "image") -> tuple[np.ndarray, ImageInfo]:
    """Decode image bytes (a file's content, or bytes sent to the served model)."""
    if not data:
        raise ImageProblem(EMPTY, f"{name} is empty (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    try:
        # Escalate Pillow's decompression-bomb warning so such a file is rejected, not decoded.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(TOO_LARGE, f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageProblem(NOT_AN_IMAGE, f"{name} is not an image ({_sniff(data)})") from None
    except OSError as exc:  # a file cut inside its header fails here, before load()
        raise ImageProblem(_truncated_or_unreadable(exc), f"{name}: {exc}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageProblem(TOO_LARGE, f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}")
        mode, bands, fmt = image.mode, len(image.getbands()), image.format or "?"
        try:
            image.load()
        except OSError as exc:
            raise ImageProblem(_truncated_or_unreadable(exc), f"{name}: {exc}") from None
        except (ValueError, SyntaxError) as exc:  # Pillow raises these for some corrupt headers
            raise ImageProblem(UNREADABLE, f"{name}: {exc}") from None
        oriented = ImageOps.exif_transpose(image)
        array = to_channels(oriented, channels, name)
    width, height = array.shape[1], array.shape[0]
    info = ImageInfo(sha, format(dhash(array), "016x"), width, height, mode, bands, len(data), fmt)
    return array, info


def to_channels(image: Image.Image, channels: int, name: str = "image") -> np.ndarray:
    """Convert any supported Pillow image to a (H, W, channels) uint8 array, explicitly."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # 16 bits scale by 257 (65535 -> 255); 32-bit integer images by their own maximum.
        top = 65535.0 if mode != "I" or values.max(initial=0) <= 65535 else float(values.max())
        grey = np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8)
        image = Image.fromarray(grey)
    elif mode == "F":
        raise ImageProblem(UNSUPPORTED_MODE, f"{name}: 32-bit float images (mode F) have no defined 0-255 range")
    elif mode in ("P", "PA"):
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode not in ("L", "RGB", "RGBA"):
        raise ImageProblem(UNSUPPORTED_MODE, f"{name}: mode {mode} is not supported")
    target = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(target), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def dhash(image: np.ndarray, size: int = 8) -> int:
    """Difference hash: 64 bits comparing neighbouring pixels of a 9x8 grey thumbnail.

    Robust to resizing and small brightness changes, so near duplicates (re-encoded, rescaled
    copies) land within a few bits of each other.
    """
    grey = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (size + 1, size), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) to (height, width): area averaging to shrink (no aliasing), bilinear to grow."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return out[:, :, None] if out.ndim == 2 else out


def _truncated_or_unreadable(exc: OSError) -> str:
    message = str(exc).lower()
    return TRUNCATED if "truncated" in message or "broken data stream" in message else UNREADABLE


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "text"
    return "unknown format"


# Truncated files must fail loudly; this is Pillow's default, stated so nothing flips it silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
