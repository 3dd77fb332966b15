"""Decode image files of any common kind into 8-bit RGB arrays.

Grey, RGB, RGBA (alpha composited on white), palette, 16-bit grey, 32-bit integer and float images and
CMYK JPEGs are all turned into ``uint8`` RGB.  Anything that cannot be decoded raises
:class:`~vinspect.errors.ImageDecodeError` naming the file and the reason.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImageDecodeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey
# Decompression-bomb guard: refuse absurd pixel counts (PIL raises DecompressionBombError above 2x).
Image.MAX_IMAGE_PIXELS = 100_000_000

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        # full 16-bit range onto 0..255: rint(v / 257) in integers (v / 257 never ends in .5), 4 bytes a pixel
        # of working memory instead of the 16 of a float64 division
        a = np.asarray(img, dtype=np.uint32)
        a += 128
        a //= 257
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)  # 32-bit int or float: stretch its own range
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


# -- bounded decoding -----------------------------------------------------------------------------------
# Bytes a pixel that PIL holds for a decoded image of each mode (multi-band images are stored 4 bytes a pixel).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
# Working bytes a pixel on top of that, to reach 8-bit RGB: the RGB image (4) and its copy (4), plus the
# integer (16-bit: 4 + 1 + 1) or float64 (32-bit: 8 + 8 + 1 + 1) conversion buffers.
_EXTRA_BYTES = {"I;16": 6, "I;16B": 6, "I;16L": 6, "I;16N": 6, "I": 18, "F": 18}


def jpeg_scale(width: int, height: int, min_size: int | None) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) a JPEG is decoded at when both sides must stay >= min_size."""
    s = 1
    if min_size:
        while s < 8 and min(width, height) // (2 * s) >= min_size:
            s *= 2
    return s


def decode_cost(width: int, height: int, mode: str, image_format: str | None = None,
                min_size: int | None = None) -> int:
    """Peak bytes of memory that decoding an image of this header to 8-bit RGB takes:
    width x height x (bytes PIL stores a pixel of ``mode`` in + the working bytes of the conversion + 8 for
    the RGB image and its copy), divided by the scale^2 of a reduced-size JPEG decode."""
    per_pixel = _STORED_BYTES.get(mode, 4) + _EXTRA_BYTES.get(mode, 0) + 8
    pixels = int(width) * int(height)
    if (image_format or "").upper() in ("JPEG", "MPO") and min_size:
        pixels //= jpeg_scale(width, height, min_size) ** 2
    return pixels * per_pixel


def read_header(data: bytes) -> tuple[int, int, str, str]:
    """(width, height, mode, format) from the header alone (no pixel is decoded); ImageDecodeError if none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the caller checks the pixel count
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1]), str(im.mode), str(im.format or "unknown")
    except Image.DecompressionBombError as e:
        raise ImageDecodeError("<bytes>", f"too many pixels (decompression bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("<bytes>", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError("<bytes>", f"corrupt or truncated image header ({e})") from None


_JPEG_CORRUPT = ("corrupt jpeg data", "premature end", "bogus", "invalid", "truncated", "extraneous")


def _decode_jpeg_strict(data: bytes, name: str, min_size: int | None = None) -> Image.Image | None:
    """libjpeg-turbo in strict mode (simplejpeg): 3x faster than PIL, and it refuses the corrupt data that
    PIL decodes silently into grey blocks.  None when it cannot handle the file (e.g. CMYK): PIL then decodes."""
    try:
        import simplejpeg
    except ImportError:  # optional speed-up
        return None
    try:
        kw = {"min_height": min_size, "min_width": min_size} if min_size else {}
        return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kw), "RGB")
    except ValueError as e:
        if any(w in str(e).lower() for w in _JPEG_CORRUPT):
            raise ImageDecodeError(name, f"corrupt JPEG data ({e})") from None
        return None


def open_image(source: str | Path | bytes, min_size: int | None = None) -> Image.Image:
    """Open and fully decode an image (path or bytes) as an RGB PIL image.

    ``min_size``: a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling, 1/2, 1/4, 1/8) as long as
    both sides stay at least this large: large camera frames decode several times faster.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        if isinstance(source, (bytes, bytearray)):
            data = bytes(source)
        else:
            data = Path(source).read_bytes()
        if len(data) == 0:
            raise ImageDecodeError(name, "empty file (0 bytes)")
        if data[:3] == b"\xff\xd8\xff":
            img = _decode_jpeg_strict(data, name, min_size)
            if img is not None:
                return img
        fp = io.BytesIO(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                return _to_rgb(img).copy()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(name, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(name, f"too many pixels (decompression bomb guard): {e}") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except FileNotFoundError:
        raise ImageDecodeError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "a directory, not an image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(name, f"corrupt or truncated image ({e})") from None


def resize(img: Image.Image, size, interpolation: str = "bicubic", mode: str = "squash") -> Image.Image:
    """Resize to ``size`` x ``size`` (or to ``size = (height, width)``).

    ``squash`` stretches the whole image (nothing is cropped away: a defect at the border stays in);
    ``letterbox`` keeps the aspect ratio and pads with the image's mean border colour.
    """
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    resample = _RESAMPLE[interpolation]
    if mode == "squash":
        if img.size == (tw, th):
            return img
        return img.resize((tw, th), resample)
    if mode == "letterbox":
        w, h = img.size
        s = min(tw / w, th / h)
        nw, nh = min(tw, max(1, round(w * s))), min(th, max(1, round(h * s)))
        small = img.resize((nw, nh), resample)
        arr = np.asarray(img)
        edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).mean(axis=0)
        fill = tuple(int(v) for v in np.atleast_1d(edge))
        canvas = Image.new(img.mode, (tw, th), fill if len(fill) > 1 else fill[0])
        canvas.paste(small, ((tw - nw) // 2, (th - nh) // 2))
        return canvas
    raise ValueError(f"unknown resize mode {mode!r} (use squash or letterbox)")


def load_rgb(source, size, interpolation: str = "bicubic", mode: str = "squash") -> np.ndarray:
    """Decode ``source`` and resize it: an ``(size, size, 3)`` (or ``(height, width, 3)``) uint8 array."""
    min_size = size if isinstance(size, int) else max(int(size[0]), int(size[1]))
    return np.array(resize(open_image(source, min_size=min_size), size, interpolation, mode), dtype=np.uint8)


_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., H, W, 1) uint8 luminance (ITU-R BT.601 weights)."""
    return np.clip(np.rint(rgb.astype(np.float32) @ _GREY), 0, 255).astype(np.uint8)[..., None]
