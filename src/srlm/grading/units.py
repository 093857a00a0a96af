"""Units written after a number: which words are units, and how to convert between them.

Only common units get a conversion factor. An unknown trailing word ("apples", "ergs") is still
stripped as a label, but then the two answers are compared without converting.
"""

from __future__ import annotations

import re
from fractions import Fraction

# name -> (dimension, factor to the base unit of that dimension)
_LENGTH = {
    "m": 1, "meter": 1, "meters": 1, "metre": 1, "metres": 1,
    "cm": Fraction(1, 100), "centimeter": Fraction(1, 100), "centimeters": Fraction(1, 100),
    "mm": Fraction(1, 1000), "millimeter": Fraction(1, 1000), "millimeters": Fraction(1, 1000),
    "km": 1000, "kilometer": 1000, "kilometers": 1000,
    "nm": Fraction(1, 10**9), "um": Fraction(1, 10**6), "AA": Fraction(1, 10**10), "angstrom": Fraction(1, 10**10),
    "in": Fraction(254, 10000), "inch": Fraction(254, 10000), "inches": Fraction(254, 10000),
    "ft": Fraction(3048, 10000), "foot": Fraction(3048, 10000), "feet": Fraction(3048, 10000),
    "yd": Fraction(9144, 10000), "yard": Fraction(9144, 10000), "yards": Fraction(9144, 10000),
    "mi": Fraction(1609344, 1000), "mile": Fraction(1609344, 1000), "miles": Fraction(1609344, 1000),
}
_MASS = {
    "g": 1, "gram": 1, "grams": 1, "kg": 1000, "kilogram": 1000, "kilograms": 1000,
    "mg": Fraction(1, 1000), "milligram": Fraction(1, 1000), "milligrams": Fraction(1, 1000),
    "lb": Fraction(45359237, 100000), "lbs": Fraction(45359237, 100000), "pound": Fraction(45359237, 100000),
    "pounds": Fraction(45359237, 100000), "oz": Fraction(45359237, 1600000), "ounce": Fraction(45359237, 1600000),
    "ounces": Fraction(45359237, 1600000),
}
_TIME = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "ms": Fraction(1, 1000),
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "day": 86400, "days": 86400, "week": 604800, "weeks": 604800,
}
_MONEY = {"dollar": 1, "dollars": 1, "cent": Fraction(1, 100), "cents": Fraction(1, 100)}
_VOLUME = {"L": 1, "l": 1, "liter": 1, "liters": 1, "litre": 1, "litres": 1,
           "mL": Fraction(1, 1000), "ml": Fraction(1, 1000), "milliliter": Fraction(1, 1000),
           "milliliters": Fraction(1, 1000)}
_ANGLE = {"degree": 1, "degrees": 1, "deg": 1}

UNITS: dict[str, tuple[str, Fraction]] = {}
for _dimension, _table in (("length", _LENGTH), ("mass", _MASS), ("time", _TIME), ("money", _MONEY),
                           ("volume", _VOLUME), ("angle", _ANGLE)):
    for _name, _factor in _table.items():
        UNITS[_name] = (_dimension, Fraction(_factor))

# Number words written after digits ("1.2 million"): they scale the value.
MULTIPLIERS = {"thousand": Fraction(10**3), "million": Fraction(10**6), "billion": Fraction(10**9),
               "trillion": Fraction(10**12)}

# One-letter units are also common variable names; they are only stripped as an alternative reading.
SINGLE_LETTER_UNITS = frozenset("msgKJNWVALC")

_POWER = re.compile(r"^(.*?)\^\{?(-?\d)\}?$")
_SQUARE = re.compile(r"^(?:square|sq)(.+)$")
_CUBIC = re.compile(r"^(?:cubic|cu)(.+)$")


def unit_scale(unit: str) -> tuple[tuple, Fraction] | None:
    """(dimension, factor to base units) of a canonical unit string such as ``cm^2`` or ``km/h``."""
    if "/" in unit:
        top, _, bottom = unit.partition("/")
        a, b = unit_scale(top), unit_scale(bottom)
        if a is None or b is None:
            return None
        return (a[0], "per", b[0]), a[1] / b[1]
    power = 1
    m = _POWER.match(unit)
    if m:
        unit, power = m.group(1), int(m.group(2))
    else:
        for pattern, p in ((_SQUARE, 2), (_CUBIC, 3)):
            m = pattern.match(unit)
            if m and m.group(1) in UNITS:
                unit, power = m.group(1), p
                break
    if unit not in UNITS:
        unit = unit.rstrip("s") if unit.rstrip("s") in UNITS else unit
    if unit not in UNITS:
        return None
    dimension, factor = UNITS[unit]
    return (dimension, power), factor ** power


def conversion_factor(from_unit: str, to_unit: str) -> Fraction | None | bool:
    """Factor turning a value in ``from_unit`` into ``to_unit``.

    ``None`` when either unit is unknown (compare the numbers as they are); ``False`` when both are
    known and measure different things (the answers cannot be equal).
    """
    if from_unit == to_unit:
        return Fraction(1)
    a, b = unit_scale(from_unit), unit_scale(to_unit)
    if a is None or b is None:
        return None
    if a[0] != b[0]:
        return False
    return a[1] / b[1]
