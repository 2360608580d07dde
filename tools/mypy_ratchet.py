"""mypy on the whole package against a ratcheted baseline (``tools/mypy-baseline.txt``).

Each error is keyed by file, message and code (not the line, which moves with every edit).
The check fails on an error the baseline does not hold, and on a baseline entry that no
longer occurs (the baseline may only shrink: ``--update`` rewrites it after a fix).

    python tools/mypy_ratchet.py            # the check `make lint` runs
    python tools/mypy_ratchet.py --update   # write the baseline from the current errors
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tools" / "mypy-baseline.txt"
_ERROR = re.compile(r"^(?P<file>[^:]+):\d+(?::\d+)?: error: (?P<msg>.*)$")


def current_errors() -> Counter[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "raypipe", "--no-error-summary", "--no-pretty", "--show-error-codes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, 1):
        sys.exit(f"mypy did not run:\n{proc.stdout}{proc.stderr}")
    found: Counter[str] = Counter()
    for line in proc.stdout.splitlines():
        m = _ERROR.match(line)
        if m:
            found[f"{m['file']}: {m['msg']}"] += 1
    return found


def read_baseline() -> Counter[str]:
    if not BASELINE.exists():
        return Counter()
    lines = [x for x in BASELINE.read_text(encoding="utf-8").splitlines() if x and not x.startswith("#")]
    return Counter(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="write the baseline from the current errors")
    args = parser.parse_args()
    now = current_errors()
    if args.update:
        header = "# mypy errors accepted for now (file: message [code]); this list may only shrink.\n"
        BASELINE.write_text(header + "".join(f"{k}\n" for k in sorted(now.elements())), encoding="utf-8")
        print(f"mypy baseline: {sum(now.values())} errors written to {BASELINE.relative_to(ROOT)}")
        return 0
    base = read_baseline()
    new, gone = now - base, base - now
    for k in sorted(new.elements()):
        print(f"new mypy error: {k}")
    for k in sorted(gone.elements()):
        print(f"fixed (remove it from the baseline: python tools/mypy_ratchet.py --update): {k}")
    print(f"mypy: {sum(now.values())} errors, baseline {sum(base.values())}, new {sum(new.values())}")
    return 1 if new or gone else 0


if __name__ == "__main__":
    sys.exit(main())
