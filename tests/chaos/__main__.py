"""``make chaos``: the full chaos run (``python -m tests.chaos --submits 5000``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.chaos.harness import run_chaos


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos")
    p.add_argument("--submits", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=24)
    p.add_argument("--keep", default="", help="run in this directory and keep it (logs, stores)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tongban-chaos-") as tmp:
        root = Path(args.keep or tmp)
        report = asyncio.run(run_chaos(root, submits=args.submits, concurrency=args.concurrency))
    ok = report.lost == 0 and report.duplicated == 0 and report.rejected == 0 and report.ledgers_consistent
    print("chaos run " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
