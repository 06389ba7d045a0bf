"""Kubernetes resource quantities ("32", "500m", "256Gi", "1e3") as exact numbers.

One parser for every place that needs a quantity's value: the API's validation (positive, and no
larger than the API server can represent) and the renderer (CPU cores per process). It follows
apimachinery's grammar: a signed decimal number and one optional suffix, either a decimal SI
suffix (n u m k M G T P E), a binary one (Ki Mi Gi Ti Pi Ei) or a decimal exponent (e3, E-2).
Values are Fractions, so "0.1" is a tenth and "1Ei" is 2**60, never a rounded float.
"""

from __future__ import annotations

import re
from fractions import Fraction

_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>[KMGTPE]i|[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)

# Beyond this, the API server caps the value: a larger request cannot be what the user meant.
MAX_QUANTITY = Fraction(2**63 - 1)
# An exponent this large can only describe a value far beyond MAX_QUANTITY (or one that is zero);
# refusing it keeps the arithmetic on a few hundred digits whatever a user writes.
_MAX_EXPONENT = 1000


class QuantityError(ValueError):
    """Text that is not a Kubernetes quantity, or one this API does not accept."""


def parse_quantity(text: str) -> Fraction:
    """The exact value of the quantity ``text`` in its base unit (cores, bytes)."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError("not a quantity: write a number with an optional suffix (500m, 2, 1.5k, 256Gi, 1e3)")
    value = Fraction(match["number"])
    if match["sign"] == "-":
        value = -value
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"the exponent is out of range (at most {_MAX_EXPONENT} either way)")
        return value * Fraction(10) ** exponent
    suffix = match["suffix"] or ""
    if suffix in _BINARY_SUFFIXES:
        return value * 2 ** _BINARY_SUFFIXES[suffix]
    return value * Fraction(10) ** _DECIMAL_SUFFIXES[suffix]


def positive_quantity(text: str) -> str:
    """``text`` if it is a quantity above zero that the API server can represent; else QuantityError."""
    value = parse_quantity(text)
    if value <= 0:
        raise QuantityError("must be greater than zero")
    if value > MAX_QUANTITY:
        raise QuantityError(f"must be at most {MAX_QUANTITY}, the largest quantity Kubernetes represents")
    return text
