"""Turning an uploaded file into a safe, fully decoded image, or a clear QueryError.

Memory per request is bounded before any pixel is decoded: the header's size must stay under
MAX_PIXELS (a 38 KB PNG can declare 6300x6300 = 119 MB of RGB), and at most DECODE_SLOTS
uploads are decoded at once; the others wait their turn (or get a 503 after DECODE_WAIT_S).
"""
from __future__ import annotations

import io
import threading
import warnings

from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import ServiceUnavailable

from app.search import QueryError

MAX_PIXELS = 24_000_000  # 6000x4000, a 24-megapixel photo: 72 MB as RGB
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF"}
DECODE_SLOTS = 2
DECODE_WAIT_S = 30.0
_slots = threading.BoundedSemaphore(DECODE_SLOTS)


def read_image(data: bytes) -> Image.Image:
    if not data:
        raise QueryError("the uploaded file is empty")
    if not _slots.acquire(timeout=DECODE_WAIT_S):
        raise ServiceUnavailable("the server is decoding other uploads; try again in a moment")
    try:
        return _decode(data)
    finally:
        _slots.release()


def _decode(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in ALLOWED_FORMATS:
                raise QueryError(f"unsupported image type {im.format}; use JPEG, PNG, WebP, BMP or GIF")
            if im.width * im.height > MAX_PIXELS:
                raise QueryError(f"the image is {im.width}x{im.height} pixels; the limit is {MAX_PIXELS:,} pixels "
                                 f"(about 6000x4000)")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # an animated GIF/WebP: its first frame only
            im.load()
    except QueryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise QueryError(f"the image declares too many pixels; the limit is {MAX_PIXELS:,} pixels (about 6000x4000)"
                         ) from None
    except UnidentifiedImageError:
        raise QueryError("the file is not an image this server can read (JPEG, PNG, WebP, BMP or GIF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise QueryError(f"the uploaded image is damaged or truncated ({exc})") from None
    rgb = im.convert("RGB")
    im.close()
    return rgb
