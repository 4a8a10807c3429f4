#!/usr/bin/env python3
"""The summary `make test` ends with: passed, failed and skipped tests per suite, with every skip's reason.

    python3 scripts/test_summary.py LOG_DIR SUITE...

Reads LOG_DIR/<suite>.log (what `make test-<suite>` printed) and understands the closing lines of the runners the
suites use: cargo test (`test result: ok. 3 passed; 0 failed; 1 ignored`), pytest with `-rs` (`5 passed, 1 skipped`,
`SKIPPED [1] file:line: reason`) and minitest (`22 runs, 392 assertions, 0 failures, 0 errors, 1 skips`). Rust tests
that skip write their reason to LOG_DIR/rust-skips.txt (PORT_SHARDING_SKIP_LOG). A suite whose log has no closing line,
or whose make target failed, counts as failed.

With PORT_SHARDING_NO_SKIP=1 (set by .ci/run) any skip fails the run: on CI's kind of machine (root, unshare, ruby)
every test can run, so a skip there means something is missing that the project's set-up should have installed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

CARGO = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored")
PYTEST = re.compile(r"^=*\s*(?P<body>(\d+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed)(, )?)+) in [\d.]+s")
PYTEST_SKIP = re.compile(r"^SKIPPED \[\d+\] (.*)$")
MINITEST = re.compile(r"^(\d+) runs, \d+ assertions, (\d+) failures, (\d+) errors, (\d+) skips")
MINITEST_SKIP = re.compile(r"^\s*\d+\) Skipped:")


def count(log: str) -> tuple[int, int, int, list[str], bool]:
    """passed, failed, skipped, skip reasons, and whether any closing line was found."""
    passed = failed = skipped = 0
    reasons: list[str] = []
    found = False
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if m := CARGO.match(line):
            found = True
            passed += int(m[1])
            failed += int(m[2])
            skipped += int(m[3])
        elif m := PYTEST.match(line.strip("= ")):
            found = True
            for n, word in re.findall(r"(\d+) (\w+)", m["body"]):
                if word == "passed":
                    passed += int(n)
                elif word in ("failed", "error", "errors"):
                    failed += int(n)
                elif word == "skipped":
                    skipped += int(n)
        elif m := PYTEST_SKIP.match(line):
            reasons.append(m[1])
        elif m := MINITEST.match(line):
            found = True
            runs, failures, errors, skips = (int(m[k]) for k in range(1, 5))
            failed += failures + errors
            skipped += skips
            passed += runs - failures - errors - skips
        elif MINITEST_SKIP.match(line) and i + 1 < len(lines):
            reasons.append(lines[i + 1].strip())
    return passed, failed, skipped, reasons, found


def main(log_dir: Path, suites: list[str]) -> int:
    failed_suites = set()
    marker = log_dir / "failed-suites.txt"
    if marker.exists():
        failed_suites = {line.split(":")[0] for line in marker.read_text().splitlines()}
    rust_skips_file = log_dir / "rust-skips.txt"
    rust_skips = rust_skips_file.read_text().splitlines() if rust_skips_file.exists() else []
    totals = [0, 0, 0]
    all_reasons: list[str] = []
    ok = True
    print("\n=== make test: summary")
    print(f"  {'suite':<14} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for suite in suites:
        path = log_dir / f"{suite}.log"
        passed, failed, skipped, reasons, found = count(path.read_text(errors="replace") if path.exists() else "")
        if suite == "rust":
            skipped += len(rust_skips)
            passed -= len(rust_skips)  # a Rust test that skips returns early, so cargo counted it as passed
            reasons += rust_skips
        note = ""
        if suite in failed_suites or not found:
            ok = False
            failed = max(failed, 1)
            note = "  (the suite failed)" if found else "  (no test ran: the suite failed before its tests)"
        print(f"  {suite:<14} {passed:>7} {failed:>7} {skipped:>8}{note}")
        for r in reasons:
            all_reasons.append(f"{suite}: {r}")
        totals[0] += passed
        totals[1] += failed
        totals[2] += skipped
    for r in all_reasons:
        print(f"  skipped — {r}")
    if os.environ.get("PORT_SHARDING_NO_SKIP") == "1" and totals[2]:
        print("  PORT_SHARDING_NO_SKIP=1: every test must run on this machine, and some were skipped")
        ok = False
    print(f"summary: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 0 if ok and totals[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
