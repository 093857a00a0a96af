"""Values of expression trees: exact rationals when possible, else complex floats.

``exact_value`` keeps comparisons of plain numbers exact (``1/2`` = ``0.5``, ``0.1+0.2`` = ``0.3``).
``numeric_value`` evaluates anything else, with free symbols set to fixed pseudo-random values, so
two expressions can be compared by value at a few points: two different formulas agree at random
points only by accident (the idea behind polynomial identity testing), and it costs microseconds.
Every operation that could grow without bound (powers, factorials, binomials) has a size cap, so a
hostile ``10^{10^{10}}`` gives up at once instead of building a 10-billion-digit number.
"""

from __future__ import annotations

import cmath
import math
import zlib
from fractions import Fraction

# An exact power is computed only if its result has at most this many bits.
_MAX_EXACT_BITS = 20_000
_MAX_FACTORIAL = 300
_SAMPLE_LOW, _SAMPLE_SPAN = 0.55, 1.35
WIDE_POINTS_FROM = 16


class EvalError(ArithmeticError):
    """No finite value at this point (division by zero, overflow, outside a function's domain)."""


def free_symbols(node: tuple) -> frozenset[str]:
    """Names of the variables in ``node``."""
    if node[0] == "sym":
        return frozenset((node[1],))
    found: frozenset[str] = frozenset()
    for child in node[1:]:
        if isinstance(child, tuple):
            found |= free_symbols(child)
    return found


def fold_symbol_case(node: tuple) -> tuple:
    """``node`` with every variable name lower-cased."""
    if node[0] == "sym":
        return ("sym", node[1].lower())
    return tuple(fold_symbol_case(c) if isinstance(c, tuple) else c for c in node)


def contains(node: tuple, kind: str) -> bool:
    """Whether a node of ``kind`` (``"pi"``, ``"inf"``, ``"pm"`` …) occurs in ``node``."""
    if node[0] == kind:
        return True
    return any(isinstance(c, tuple) and contains(c, kind) for c in node[1:])


def expand_pm(node: tuple, limit: int = 8) -> list[tuple]:
    """The trees obtained by reading each ``±`` as ``+`` and as ``-`` (at most ``limit``)."""
    if not contains(node, "pm"):
        return [node]
    if node[0] == "pm":
        lefts = expand_pm(node[1], limit)
        rights = expand_pm(node[2], limit)
        out = [("add", a, b) for a in lefts for b in rights] + [("add", a, ("neg", b)) for a in lefts for b in rights]
        return _dedupe(out)[:limit]
    variants: list[list] = [[node[0]]]
    for child in node[1:]:
        options = expand_pm(child, limit) if isinstance(child, tuple) else [child]
        variants = [v + [o] for v in variants for o in options][:limit]
    return _dedupe([tuple(v) for v in variants])


def _dedupe(items: list[tuple]) -> list[tuple]:
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def exact_value(node: tuple) -> Fraction | None:
    """The exact rational value of ``node``, or ``None`` when it is not a (small) rational."""
    try:
        return _exact(node)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None


def _exact(node: tuple) -> Fraction | None:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "add":
        a = _exact(node[1])
        if a is None:
            return None
        b = _exact(node[2])
        return None if b is None else a + b
    if kind == "neg":
        a = _exact(node[1])
        return None if a is None else -a
    if kind == "mul":
        a = _exact(node[1])
        if a is None:
            return None
        b = _exact(node[2])
        return None if b is None else a * b
    if kind == "div":
        a = _exact(node[1])
        if a is None:
            return None
        b = _exact(node[2])
        if b is None or b == 0:
            return None
        return a / b
    if kind == "pow":
        return _exact_power(node)
    if kind == "abs":
        a = _exact(node[1])
        return None if a is None else abs(a)
    if kind in ("floor", "ceil"):
        a = _exact(node[1])
        if a is None:
            return None
        return Fraction(math.floor(a) if kind == "floor" else math.ceil(a))
    if kind == "fact":
        a = _exact(node[1])
        if a is None or a.denominator != 1 or not 0 <= a <= _MAX_FACTORIAL:
            return None
        return Fraction(math.factorial(int(a)))
    if kind == "binom":
        n, k = _exact(node[1]), _exact(node[2])
        if n is None or k is None or n.denominator != 1 or k.denominator != 1 or not 0 <= n <= 5000:
            return None
        return Fraction(math.comb(int(n), int(k))) if k >= 0 else Fraction(0)
    return None


def _exact_power(node: tuple) -> Fraction | None:
    exponent = _exact(node[2])
    if exponent is None:
        return None
    base = _exact(node[1])
    if base is None:
        return None
    if base == 0:
        return None if exponent < 0 else Fraction(int(exponent == 0))
    if base == 1:
        return base
    p, q = exponent.numerator, exponent.denominator
    if q != 1:
        if base < 0 or q > 12:
            return None
        root_n, root_d = _int_root(base.numerator, q), _int_root(base.denominator, q)
        if root_n is None or root_d is None:
            return None
        base = Fraction(root_n, root_d)
    bits = (base.numerator.bit_length() + base.denominator.bit_length()) * abs(p)
    if bits > _MAX_EXACT_BITS:
        return None
    return base ** p


def _int_root(n: int, q: int) -> int | None:
    """The exact integer ``q``-th root of ``n >= 0``, or ``None``."""
    if n.bit_length() > 1000:
        return None
    guess = round(n ** (1.0 / q)) if n < 2**1000 else None
    if guess is None:
        return None
    for r in (guess - 1, guess, guess + 1):
        if r >= 0 and r**q == n:
            return r
    return None


def sample_value(name: str, point: int) -> float:
    """The value given to variable ``name`` at sample ``point``: fixed, so runs are reproducible.

    Points from ``WIDE_POINTS_FROM`` on spread over [2, 62): step functions (floor, ceiling) are constant
    over the narrow range of the first points, so two different ones would agree there."""
    h = zlib.crc32(f"{name}\x00{point}".encode("utf-8", "replace"))
    if point >= WIDE_POINTS_FROM:
        return 2 + 60 * (h % 100_003) / 100_003
    return _SAMPLE_LOW + _SAMPLE_SPAN * (h % 100_003) / 100_003


def numeric_value(node: tuple, point: int = 0) -> complex:
    """Complex value of ``node`` with every variable at its sample value; raises ``EvalError``."""
    try:
        value = _num(node, point)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError):
        raise EvalError("no finite value") from None
    if not cmath.isfinite(value):
        raise EvalError("not finite")
    return value


_FUNCTIONS = {
    "sin": cmath.sin, "cos": cmath.cos, "tan": cmath.tan,
    "sec": lambda z: 1 / cmath.cos(z), "csc": lambda z: 1 / cmath.sin(z), "cot": lambda z: 1 / cmath.tan(z),
    "arcsin": cmath.asin, "arccos": cmath.acos, "arctan": cmath.atan,
    "arcsec": lambda z: cmath.acos(1 / z), "arccsc": lambda z: cmath.asin(1 / z), "arccot": lambda z: cmath.atan(1 / z),
    "sinh": cmath.sinh, "cosh": cmath.cosh, "tanh": cmath.tanh, "coth": lambda z: 1 / cmath.tanh(z),
    "arsinh": cmath.asinh, "arcosh": cmath.acosh, "artanh": cmath.atanh,
    "exp": cmath.exp,
    "sgn": lambda z: complex((z.real > 0) - (z.real < 0)),
}


def _num(node: tuple, point: int) -> complex:
    kind = node[0]
    if kind == "num":
        return complex(node[1])
    if kind == "sym":
        return complex(sample_value(node[1], point))
    if kind == "add":
        return _num(node[1], point) + _num(node[2], point)
    if kind == "neg":
        return -_num(node[1], point)
    if kind == "mul":
        return _num(node[1], point) * _num(node[2], point)
    if kind == "div":
        return _num(node[1], point) / _num(node[2], point)
    if kind == "pow":
        return _power(_num(node[1], point), _num(node[2], point))
    if kind == "pi":
        return complex(math.pi)
    if kind == "e":
        return complex(math.e)
    if kind == "i":
        return 1j
    if kind == "fn":
        return _FUNCTIONS[node[1]](_num(node[2], point))
    if kind == "log":
        arg = _num(node[2], point)
        if node[1] is None:
            return cmath.log(arg)
        return cmath.log(arg) / cmath.log(_num(node[1], point))
    if kind == "abs":
        return complex(abs(_num(node[1], point)))
    if kind in ("floor", "ceil"):
        z = _num(node[1], point)
        if z.imag:
            raise ValueError("floor of a complex number")
        return complex(math.floor(z.real) if kind == "floor" else math.ceil(z.real))
    if kind == "fact":
        z = _num(node[1], point)
        if z.imag or z.real > 170:
            raise OverflowError("factorial too large")
        return complex(math.gamma(z.real + 1))
    if kind == "binom":
        n, k = _num(node[1], point), _num(node[2], point)
        if n.imag or k.imag or n.real > 170:
            raise OverflowError("binomial too large")
        return complex(math.gamma(n.real + 1) / (math.gamma(k.real + 1) * math.gamma(n.real - k.real + 1)))
    raise ValueError(f"no numeric value for {kind}")


def _power(base: complex, exponent: complex) -> complex:
    if abs(exponent) > 1e6:
        raise OverflowError("exponent too large")
    if not base.imag and not exponent.imag and (base.real > 0 or float(exponent.real).is_integer()):
        return complex(math.pow(base.real, exponent.real))
    if base == 0:
        if exponent.real > 0:
            return 0j
        raise ZeroDivisionError("0 to a non-positive power")
    return base ** exponent


def close(a: complex, b: complex, rel: float = 1e-9, floor: float = 1e-12) -> bool:
    """Equal up to floating-point error: relative 1e-9, or absolute 1e-12 near zero."""
    diff = abs(a - b)
    return diff <= floor or diff <= rel * max(abs(a), abs(b))
