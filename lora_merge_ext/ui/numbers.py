"""Numbers from the form's boxes: empty is None, anything else must be a finite number."""
from __future__ import annotations

import math

from ..errors import LoraMergeError


def number_or_none(value, what: str, integer: bool = False):
    """None for an empty box (None or blank text); else the finite number (a positive int when
    integer), or LoraMergeError naming `what`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LoraMergeError(f"{what} '{value}' is not a number") from None
    if not math.isfinite(number):
        raise LoraMergeError(f"{what} {value} is not a finite number")
    if integer:
        if number != int(number) or number < 1:
            raise LoraMergeError(f"{what} {value} must be a positive whole number")
        return int(number)
    return number
