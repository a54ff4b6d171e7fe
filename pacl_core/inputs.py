"""Input checking: images of any kind become (H, W, 3) uint8 RGB arrays, word lists become clean lists.

Every problem is a PACLError with one sentence, so the CLI and the demo can show it as it is.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pacl_core.errors import PACLError

MAX_WORDS = 50  # a cap on one vocabulary typed by a user (datasets with more classes bypass it)
MAX_SIDE = 2048  # larger images are downscaled on load, so memory stays bounded
MAX_PIXELS = 400_000_000  # refuse to even decode anything larger (decompression bombs)


def _downscale(img: Image.Image, max_side: int) -> Image.Image:
    if max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def pil_to_rgb(img: Image.Image, max_side: int = MAX_SIDE) -> np.ndarray:
    """Any PIL image (RGB, RGBA, L, LA, P, I;16, I, F, CMYK, 1) -> (H, W, 3) uint8, downscaled if huge."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)  # (H, W) in the image's own range
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = _downscale(img.convert("RGB"), max_side)
    return np.asarray(img, dtype=np.uint8).copy()


def to_rgb_array(image, max_side: int = MAX_SIDE) -> np.ndarray:
    """PIL image, numpy array (H,W), (H,W,1|3|4) of uint8/uint16/float in [0,1], or a path -> (H,W,3) uint8."""
    if isinstance(image, (str, Path)):
        return load_image(image, max_side)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image, max_side)
    if not isinstance(image, np.ndarray):
        raise PACLError(f"expected an image (PIL image, numpy array or file path), got {type(image).__name__}")
    arr = image
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise PACLError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype == np.uint8:
        if arr.ndim == 3 and arr.shape[2] == 3 and max(arr.shape[:2]) <= max_side:
            return np.ascontiguousarray(arr)  # already what we need: no copy through PIL
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    else:
        raise PACLError(f"unsupported image array dtype {arr.dtype}")
    return pil_to_rgb(Image.fromarray(np.ascontiguousarray(arr)), max_side)


def check_pixels(name: str, value, max_side: int = MAX_SIDE) -> None:
    """A size in pixels set by a user (None: the default) must be a whole number from 1 to max_side: images are
    downscaled to MAX_SIDE on load, so nothing larger is ever needed, and a typo must not allocate gigabytes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= max_side:
        raise PACLError(f"{name} must be a whole number of pixels from 1 to {max_side}, got {value}")


def check_out_folder(path) -> Path:
    """An output folder a user named: refused at once, before any work, if it is a file or cannot be written
    (tried by making and removing an empty folder in it or in its nearest existing parent). Creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise PACLError(f"{out}: exists and is not a folder")
    ancestor = next(a for a in (out.absolute(), *out.absolute().parents) if a.exists())
    if not ancestor.is_dir():
        raise PACLError(f"{out}: cannot be made, {ancestor} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pacl-write-check-", dir=ancestor))
    except OSError as e:
        raise PACLError(f"{out}: cannot write there ({e.strerror or e})") from None
    return out


def check_image_file(path) -> tuple[int, int]:
    """Cheap check that a file is a readable image (header and checksums, no full decode) -> (width, height)."""
    path = Path(path)
    if not path.is_file():
        raise PACLError(f"{path}: {'is a folder, not an image' if path.is_dir() else 'no such file'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                size = img.size
                img.verify()
    except UnidentifiedImageError:
        raise PACLError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise PACLError(f"{path}: the image is too large to decode ({_pixels(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PACLError(f"{path}: cannot decode image, the file is corrupt or truncated ({reason})") from None
    return size


def load_image(path, max_side: int = MAX_SIDE) -> np.ndarray:
    """Read an image file into an (H, W, 3) uint8 RGB array, with one-line errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise PACLError(f"{path}: no such file")
    if path.is_dir():
        raise PACLError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise PACLError(f"{path}: {img.width}x{img.height} pixels is too large to decode")
                if img.format == "JPEG" and max(img.size) > 2 * max_side:
                    img.draft("RGB", (max_side, max_side))  # decode JPEGs at reduced size directly
                img.load()
                return pil_to_rgb(img, max_side)
    except UnidentifiedImageError:
        raise PACLError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise PACLError(f"{path}: the image is too large to decode ({_pixels(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PACLError(f"{path}: cannot decode image, the file is corrupt or truncated ({reason})") from None


def _pixels(error: Exception) -> str:
    """Pillow's decompression-bomb message -> 'N pixels, more than Pillow's limit of M'."""
    numbers = re.findall(r"\d+", str(error))
    return f"{numbers[0]} pixels" if numbers else "more pixels than Pillow decodes"


_SPLIT = re.compile(r"[,;\n]+")


def parse_words(words, max_words: int = MAX_WORDS) -> tuple[list[str], list[str]]:
    """'dog, grass, sky' or ['dog', 'grass'] -> (clean unique words, notes for the user).

    Whitespace is collapsed, empty entries dropped, duplicates (case-insensitive) removed with a note.
    """
    if words is None:
        words = []
    raw = _SPLIT.split(words) if isinstance(words, str) else [str(w) for w in words]
    cleaned = [" ".join(w.split()) for w in raw]
    cleaned = [w for w in cleaned if w]
    if not cleaned:
        raise PACLError('no words given: type at least one word, e.g. "dog, grass, sky"')
    unique, seen, dupes = [], set(), []
    for w in cleaned:
        key = w.casefold()
        if key in seen:
            dupes.append(w)
            continue
        seen.add(key)
        unique.append(w)
    if len(unique) > max_words:
        raise PACLError(f"{len(unique)} words given; at most {max_words} words are allowed at once")
    notes = [f"removed duplicate word{'s' if len(dupes) > 1 else ''}: {', '.join(dupes)}"] if dupes else []
    return unique, notes
