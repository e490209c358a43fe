"""`python -m tests.conformance.report`: run the conformance comparison and write docs/conformance.md.

Starts its own embedded Postgres, `keel serve` and `langgraph dev`; prints the text report; exits 1 when a
divergence is not in the allow-list or an allow-list entry went stale (the same rule as the test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.conformance import suite
from tests.conformance.harness import keel_server, reference_server
from tests.support.live import REPO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "conformance.md")
    args = parser.parse_args(argv)
    with suite.embedded_database() as url, reference_server() as ref, keel_server(url) as keel:
        result = suite.run(ref.url, keel.url)
    args.out.write_text(suite.markdown_report(result), encoding="utf-8")
    print(suite.text_report(result))
    print(f"wrote {args.out}")
    return 1 if result.unexpected or result.stale else 0


if __name__ == "__main__":
    sys.exit(main())
