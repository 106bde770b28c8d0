"""Turning an uploaded file into a safe, fully decoded image, or a clear QueryError."""
from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from app.search import QueryError

MAX_PIXELS = 40_000_000  # a 20000x20000 PNG (decompression bomb) is refused before decoding
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF"}


def read_image(data: bytes) -> Image.Image:
    if not data:
        raise QueryError("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format not in ALLOWED_FORMATS:
                raise QueryError(f"unsupported image type {im.format}; use JPEG, PNG, WebP, BMP or GIF")
            if im.width * im.height > MAX_PIXELS:
                raise QueryError(f"the image is {im.width}x{im.height} pixels; the limit is {MAX_PIXELS} pixels")
            im.load()
    except QueryError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise QueryError("the uploaded file is not an image this server can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise QueryError(f"the uploaded image is damaged or truncated ({exc})") from None
    return im.convert("RGB")
