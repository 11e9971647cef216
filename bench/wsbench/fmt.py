"""How numbers read in the progress log and in the reports: milliseconds, sizes,
rates and ratios, one way everywhere.
"""

from __future__ import annotations


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f} ms" if v >= 10 else f"{v:.1f} ms"


def fmt_kb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB" if kb >= 10 * 1024 else f"{kb:.0f} KB"


def fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"
