"""Numbers in settings, as JSON brings them to Python, checked in one place.

JSON sets no bounds: ``1`` followed by 400 zeros parses to a Python int that no float holds, and
``math.isfinite`` or ``float`` on it raise OverflowError instead of answering; a setting's check
that meets one must refuse it as it refuses any other bad value. A boolean is an int to Python
and never a number to a setting (``true`` is not ``1`` second, nor ``1`` bit).
"""

from __future__ import annotations

import math


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a number (not a boolean) that a float holds finitely, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # a whole number beyond a float's range
        return None
    return number if math.isfinite(number) else None


def is_whole(value: object) -> bool:
    """Whether ``value`` is a whole number as JSON writes one (an int, not a boolean, not ``2.0``)."""
    return isinstance(value, int) and not isinstance(value, bool)
