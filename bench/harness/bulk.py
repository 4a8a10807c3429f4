"""Issue 25's comparison on paper: the engine against uvloop on bulk streams, as medians and run by run."""

from __future__ import annotations

import random
import statistics


def paired_ratios(mine: list[dict], theirs: list[dict], resamples: int = 2000, seed: int = 1) -> dict:
    """Run i of one server against run i of another (the runs alternate, so each pair shared the machine's
    state): the median of the per-pair ratios of MB/s and of server CPU per byte (< 1 is less CPU), each with
    a 95 % bootstrap interval of that median (a fixed seed: the same runs give the same interval), and in how
    many pairs the first was ahead. Pairs missing either number are left out."""
    def usable(r: dict) -> bool:
        return bool(r.get("mb_per_sec")) and bool(r.get("mb_per_server_cpu_s"))

    pairs = [(a, b) for a, b in zip(mine, theirs) if usable(a) and usable(b)]
    if not pairs:
        return {"pairs": 0}
    rng = random.Random(seed)

    def judged(ratios: list[float]) -> tuple[float, float, float]:
        boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
        return statistics.median(ratios), boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]

    mb = [a["mb_per_sec"] / b["mb_per_sec"] for a, b in pairs]
    cpu = [b["mb_per_server_cpu_s"] / a["mb_per_server_cpu_s"] for a, b in pairs]
    return {"pairs": len(pairs), "mb": judged(mb), "mb_ahead": sum(r >= 1 for r in mb),
            "cpu": judged(cpu), "cpu_ahead": sum(r <= 1 for r in cpu)}


def paired_table(cells: dict, wkeys: list[str], labels: dict[str, str], order: list[str], against: str = "uvloop") -> str:
    """Each server against `against`, run by run (see `paired_ratios`): what a median of a few runs per cell
    cannot show on a noisy machine — whether a difference is larger than the run-to-run spread."""
    L = [f"| server | workload | pairs | MB/s vs {against} (95 % interval) | ahead in | server CPU per byte vs "
         f"{against} (95 % interval) | less CPU in |", "|---|---|---:|---:|---:|---:|---:|"]
    for w in wkeys:
        theirs = cells.get(against, {}).get(w)
        for k in order:
            mine = cells.get(k, {}).get(w)
            if k == against or not mine or not theirs:
                continue
            p = paired_ratios(mine, theirs)
            if not p["pairs"]:
                continue
            (m, mlo, mhi), (c, clo, chi) = p["mb"], p["cpu"]
            L.append(f"| {labels.get(k, k)} | {w} | {p['pairs']} | {m:.2f}× ({mlo:.2f}–{mhi:.2f}) | {p['mb_ahead']} | "
                     f"{c:.2f}× ({clo:.2f}–{chi:.2f}) | {p['cpu_ahead']} |")
    return "\n".join(L) + "\n"


def bulk_table(summary: dict, wkeys: list[str], labels: dict[str, str], order: list[str]) -> str:
    """MB/s and server CPU per GB of each server, with their ratios to uvloop (issue 25's comparison)."""
    L = ["| server | workload | MB/s | vs uvloop | server CPU-s per GB | vs uvloop | load generator CPU-s per GB | runs |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
    for w in wkeys:
        base = summary.get("uvloop", {}).get(w)
        for k in order:
            c = summary.get(k, {}).get(w)
            if not c:
                continue
            per_gb = 1000 / c["work_per_server_cpu_s"] if c["work_per_server_cpu_s"] else float("nan")
            client_gb = c["client_cpu"] / c["mb_per_sec"] * 1000 if c["mb_per_sec"] else float("nan")
            vs_mb = vs_cpu = "—"
            if base and k != "uvloop" and base["mb_per_sec"] and base["work_per_server_cpu_s"]:
                vs_mb = f"{c['mb_per_sec'] / base['mb_per_sec']:.2f}×"
                vs_cpu = f"{base['work_per_server_cpu_s'] / c['work_per_server_cpu_s']:.2f}×"
            err = f" ⚠ {c['errors']} err" if c["errors"] else ""
            L.append(f"| {labels.get(k, k)} | {w} | {c['mb_per_sec']:,.0f}{err} | {vs_mb} | {per_gb:.3f} | {vs_cpu} | "
                     f"{client_gb:.3f} | {c['runs']} |")
    return "\n".join(L) + "\n"


def disturbance_table(cells: dict, wkeys: list[str], labels: dict[str, str], order: list[str]) -> str:
    """Per server and byte workload, what TCP itself counted during the runs (measure.TCP_COUNTERS, deltas over
    each run, for the whole network namespace): the median of retransmitted segments and of reorderings
    detected, and the runs in which a retransmission timed out. Runs saved before these were recorded have
    none: no table."""
    L = ["| server | workload | runs | retransmitted segments per run (median, max) | reorderings detected per run "
         "(median) | runs with a retransmission timeout |", "|---|---|---:|---:|---:|---:|"]
    for w in wkeys:
        for k in order:
            runs = [r["tcp"] for r in cells.get(k, {}).get(w, []) if r.get("tcp")]
            if not runs:
                continue
            retrans = [t.get("RetransSegs", 0) for t in runs]
            reorder = [t.get("TCPSACKReorder", 0) for t in runs]
            rto = sum(1 for t in runs if t.get("TCPTimeouts", 0) > 0)
            L.append(f"| {labels.get(k, k)} | {w} | {len(runs)} | {statistics.median(retrans):,.0f} "
                     f"({max(retrans):,}) | {statistics.median(reorder):,.0f} | {rto} |")
    return "\n".join(L) + "\n" if len(L) > 2 else ""
