"""bench/chart.svg: one panel per workload, one bar per server."""

from __future__ import annotations

from .format import fmt_num
from .measure import BYTE_WORKLOADS, WORKLOADS


def svg_chart(summary: dict, labels: dict[str, str], order: list[str]) -> str:
    """Grouped horizontal bars: one panel per workload, one bar per server (median, runs as ticks)."""
    panels = [(w, "MB/s" if w in BYTE_WORKLOADS else "ops/s") for w, *_ in WORKLOADS]
    colors = {"engine-cli": "#1f77b4", "engine-python": "#4c9be8", "engine-ruby": "#9ecae9", "talk-python": "#d62728",
              "c-epoll": "#555555", "uvloop": "#98df8a",
              "talk-ruby": "#ff9896", "asyncio": "#2ca02c"}
    bar_h, gap, panel_gap, left, width = 16, 4, 36, 180, 460
    y = 40
    parts = []
    for w, unit in panels:
        rows = [k for k in order if w in summary.get(k, {})]
        field_ = "mb_per_sec" if unit == "MB/s" else "ops_per_sec"
        vmax = max([summary[k][w][field_] for k in rows] + [1e-9])
        parts.append(f'<text x="10" y="{y}" font-weight="bold" font-size="14">{w} ({unit}, median of runs)</text>')
        y += 10
        for k in rows:
            v = summary[k][w][field_]
            bw = width * v / vmax
            parts.append(f'<text x="{left - 8}" y="{y + bar_h - 4}" text-anchor="end" font-size="12">{esc(labels.get(k, k))}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{colors.get(k, "#888")}"/>')
            parts.append(f'<text x="{left + bw + 6:.1f}" y="{y + bar_h - 4}" font-size="12">{fmt_num(v)}</text>')
            y += bar_h + gap
        y += panel_gap
    height = y
    total_w = left + width + 120
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="10" y="20" font-size="15">port-sharding bench: one server worker on CPU 0, load generator on CPU 1 (higher is better)</text>\n'
            + "\n".join(parts) + "\n</svg>\n")


def esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "")
