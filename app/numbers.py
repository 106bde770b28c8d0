"""Strict parsing of numbers from requests and files: finite, bounded, or a clear ValueError.

`float("1e400")`, `float("inf")` and `int(10**400)` are all valid Python; none is a valid box
corner, weight or count, and letting them through ends in an OverflowError (a 500) far away.
"""
from __future__ import annotations

import math

MAX_ID = 2**62  # ids above this are no row (and would overflow 64-bit database integers)


def finite(raw: object, name: str, low: float, high: float) -> float:
    """A number between low and high (inclusive), from a JSON number or a text field."""
    if isinstance(raw, bool):
        raise ValueError(f"{name} must be a number, not {raw!r}")
    if isinstance(raw, str):
        raw = raw.strip()
        if len(raw) > 64 or not raw.isascii() or "_" in raw:  # float() also reads '１', '٣' and '1_0'
            raise ValueError(f"{name} must be a number")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}")
    return value


def whole(raw: object, name: str, low: int, high: int) -> int:
    """A whole number between low and high; '3.0' is fine, '3.5' is not."""
    value = finite(raw, name, low, high)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number")
    return int(value)


def is_id(text: str, max_digits: int = 18) -> bool:
    """ASCII digits only ('²' and '٥' are digits to str.isdigit, and int() refuses or misreads them), short
    enough for a 64-bit database integer."""
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()
