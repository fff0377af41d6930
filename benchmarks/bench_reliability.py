"""Reliability figures: runs the reliability suite (tests/reliability) and prints what it counted.

    .venv/bin/python benchmarks/bench_reliability.py [-k EXPR] [--servers]

The tests record every hostile input, crash trial, concurrent run and fault scenario in
``tests.reliability.conftest.FIGURES``; a small pytest plugin reads them at the end of the
session. The last lines printed are the counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


class _Figures:
    def __init__(self) -> None:
        self.figures: dict[str, dict[str, int]] = {}
        self.outcomes: dict[str, int] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        mod = sys.modules.get("tests.reliability.conftest")
        self.figures = getattr(mod, "FIGURES", {}) if mod else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default=None, help="pytest -k expression")
    ap.add_argument("--servers", action="store_true", help="also run the server-fault tests")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    plugin = _Figures()
    argv = ["-q", "-p", "no:cacheprovider", str(REPO / "tests" / "reliability")]
    if args.k:
        argv += ["-k", args.k]
    if not args.servers:
        argv += ["-m", "not servers"]
    t0 = time.monotonic()
    code = pytest.main(argv, plugins=[plugin])
    seconds = time.monotonic() - t0
    f = plugin.figures or {}

    def pair(kind: str) -> tuple[int, int]:
        d = f.get(kind, {"tried": 0, "ok": 0})
        return d["ok"], d["tried"]

    print()
    print(f"suite: {plugin.outcomes} in {seconds:.0f} s (pytest exit {int(code)})")
    ok, n = pair("inputs")
    print(f"inputs tried and rejected cleanly: {ok}/{n}")
    ok, n = pair("crash")
    print(f"crash trials survived: {ok}/{n}")
    ok, n = pair("concurrent")
    print(f"concurrent runs without loss: {ok}/{n}")
    ok, n = pair("faults")
    print(f"fault scenarios survived: {ok}/{n}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
