"""mypy with a recorded baseline that only shrinks: `python -m tests.support.typecheck [--update]`.

Keel's code predates its type checker, so the errors it had then are recorded in `mypy-baseline.txt` beside
this file (one line per error, without line numbers, so unrelated edits do not churn it). `make lint` fails
on any error not in the baseline (new code must type-check; the packages listed as strict in pyproject.toml
are checked with the strict flags), and also when the baseline lists errors that are gone, so a fix is
recorded at once: run with `--update` to rewrite the baseline, which may only lose lines.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).with_name("mypy-baseline.txt")
PACKAGES = ["agent", "memory", "tools", "server"]
_LINE = re.compile(r"^(?P<path>[^:]+):\d+(?::\d+)?: error: (?P<msg>.*?)(?:\s+\[(?P<code>[a-z0-9-]+)\])?$")


def current_errors() -> Counter[str]:
    """Every mypy error of Keel's packages as `path: message [code]`, counted."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            *PACKAGES,
            "--no-pretty",
            "--no-error-summary",
            "--show-error-codes",
            "--hide-error-context",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in (0, 1) or "error: " in proc.stderr:
        raise SystemExit(f"mypy failed to run ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    found: Counter[str] = Counter()
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        if m:
            found[f"{m['path']}: {m['msg']} [{m['code'] or 'misc'}]"] += 1
    return found


def read_baseline() -> Counter[str]:
    if not BASELINE.exists():
        return Counter()
    return Counter(line for line in BASELINE.read_text().splitlines() if line and not line.startswith("#"))


def main(argv: list[str]) -> int:
    now, base = current_errors(), read_baseline()
    new, gone = now - base, base - now
    if "--update" in argv:
        if new and BASELINE.exists():  # the first recording takes everything; after that, nothing new
            print(
                f"mypy: {sum(new.values())} error(s) are not in the baseline; fix them, the baseline only shrinks:"
            )
            print("\n".join(f"  {e}" for e in sorted(new.elements())))
            return 1
        BASELINE.write_text(
            "# mypy errors Keel had before it was type-checked; this list may only shrink.\n"
            + "".join(f"{e}\n" for e in sorted(now.elements()))
        )
        print(f"mypy baseline: {sum(now.values())} error(s) recorded ({sum(gone.values())} removed)")
        return 0
    if new:
        print(f"mypy: {sum(new.values())} new error(s) (not in {BASELINE.relative_to(ROOT)}):")
        print("\n".join(f"  {e}" for e in sorted(new.elements())))
    if gone:
        print(
            f"mypy: {sum(gone.values())} baseline error(s) are fixed; record it: "
            "python -m tests.support.typecheck --update"
        )
    if new or gone:
        return 1
    print(f"mypy: no new errors ({sum(now.values())} in the baseline, goal 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
