"""``python -m bench`` (``make bench``): measure conductor and its baselines, write the report."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .infra import REPO, compile_conductor
from .report import table, targets, write
from .run import FULL, QUICK, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the harness works, numbers mean little")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where BENCHMARKS.md and bench.png go")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="conductor-bench-"))
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    compile_conductor()
    try:
        results = run(size, workdir, say)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    document, image = write(results, args.out)
    print(table(results))
    print()
    print("\n".join(targets(results)))
    say(f"wrote {document} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
