"""The reliability report of a test session: faults injected (and whether the test that
injected each one passed, i.e. the system survived it), generated inputs tried, and
records lost.  Tests record through the ``reliability`` fixture; the totals are printed
at the end of the session and, with ``RAYPIPE_RELIABILITY_JSON=path``, written as JSON."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    faults: list[tuple[str, str]] = field(default_factory=list)  # (test id, fault)
    generated: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    checked: Counter[str] = field(default_factory=Counter)  # records whose loss was counted
    failed: set[str] = field(default_factory=set)  # test ids that did not pass

    def summary(self) -> dict[str, Any]:
        survived = [f for test, f in self.faults if test not in self.failed]
        return {
            "faults_injected": len(self.faults),
            "faults_survived": len(survived),
            "faults": [{"test": t, "fault": f, "survived": t not in self.failed} for t, f in self.faults],
            "generated_inputs": sum(self.generated.values()),
            "generated_by_kind": dict(self.generated),
            "records_checked": sum(self.checked.values()),
            "records_lost": sum(self.lost.values()),
            "lost_by_kind": {k: v for k, v in self.lost.items() if v},
        }

    def lines(self) -> list[str]:
        s = self.summary()
        out = [
            f"faults injected {s['faults_injected']}, survived {s['faults_survived']}; "
            f"generated inputs {s['generated_inputs']}; "
            f"records checked {s['records_checked']}, lost {s['records_lost']}"
        ]
        out += [f"  {'ok  ' if f['survived'] else 'FAIL'} {f['fault']}  ({f['test']})" for f in s["faults"]]
        out += [f"  generated {n:6d} {kind}" for kind, n in sorted(self.generated.items())]
        out += [f"  lost      {n:6d} {kind}" for kind, n in sorted(self.lost.items()) if n]
        return out

    def write(self) -> None:
        path = os.environ.get("RAYPIPE_RELIABILITY_JSON")
        if path:
            with open(path, "w") as f:
                json.dump(self.summary(), f, indent=2)


REPORT = Report()


class Recorder:
    """What one test records (see the module doc)."""

    def __init__(self, test_id: str) -> None:
        self.test_id = test_id

    def fault(self, what: str) -> None:
        """A fault this test injected; it counts as survived if the test passes."""
        REPORT.faults.append((self.test_id, what))

    def generated(self, kind: str, n: int) -> None:
        REPORT.generated[kind] += n

    def records(self, kind: str, expected: int, found: int) -> int:
        """Records that should exist after a fault vs those found; returns the number lost."""
        lost = max(0, expected - found)
        REPORT.checked[kind] += expected
        REPORT.lost[kind] += lost
        return lost
