"""Numbers as the tables print them."""

from __future__ import annotations


def fmt_num(v: float) -> str:
    if v != v:  # nan
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def fmt_us(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} s"
    if v >= 1000:
        return f"{v / 1000:.1f} ms"
    return f"{v:.0f} µs"
