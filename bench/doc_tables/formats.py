"""Number formats the tables share, so that a figure is written the same way wherever it appears."""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


def num(value: float) -> str:
    """Shortest plain form: 0.0 -> '0', 22.84 -> '22.84', 3.0 -> '3'."""
    return f"{value:g}"


def fixed(decimals: int) -> Callable[[float], str]:
    """``decimals`` places, halves rounded up as written (160.85 -> 160.9, where '{:.1f}' gives 160.8)."""
    step = Decimal(1).scaleb(-decimals)
    return lambda v: str(Decimal(str(v)).quantize(step, rounding=ROUND_HALF_UP))


def dp2(value: float) -> str:
    """Two decimals, halves rounded up as written (0.625 -> 0.63): the JSON holds rounded values."""
    return str(Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def whole(value: float) -> str:
    """A whole number with thousands separators, halves rounded up (3162.5 -> 3,163)."""
    return f"{int(Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def or_tie(decimals: int) -> Callable[[float], str]:
    """``decimals`` places, or one more where it is a 5 that rounding would hide (0.945, 5.05)."""
    def fmt(value: float) -> str:
        scaled = value * 10 ** (decimals + 1)
        if abs(scaled - round(scaled)) < 1e-6 and round(scaled) % 10 == 5:
            return f"{value:.{decimals + 1}f}"
        return f"{value:.{decimals}f}"
    return fmt


dp2_or_tie = or_tie(2)


def pct(decimals: int = 1) -> Callable[[float], str]:
    return lambda v: f"{v:.{decimals}%}"


def joined(empty: str = "-", sep: str = ", ") -> Callable[[Any], str]:
    """A list as 'a, b'; an empty list as ``empty``."""
    return lambda v: sep.join(str(x) for x in v) if v else empty


def bold(fmt: str | Callable[[Any], str]) -> Callable[[Any], str]:
    """The same format, in bold (a headline figure)."""
    return lambda v: f"**{fmt(v) if callable(fmt) else fmt.format(v)}**"


def gb(value: float) -> str:
    """Bytes as decimal gigabytes, two places."""
    return f"{value / 1e9:.2f} GB"
