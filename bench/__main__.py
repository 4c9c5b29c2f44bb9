"""`python -m bench [NAME...] [--quick]`: run the benchmarks and print one table."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback

from bench import BENCHMARKS
from bench._common import Row, format_table, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"a subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer trials")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    rows: list[Row] = []
    t_all = time.perf_counter()
    for name in names:
        log(f"running {name}{' (quick)' if args.quick else ''} ...")
        t0 = time.perf_counter()
        try:
            rows += importlib.import_module(f"bench.{name}").run(args.quick)
        except ModuleNotFoundError as e:
            if e.name != f"bench.{name}":  # a module it imports is missing: a broken benchmark
                traceback.print_exc()
                rows.append(Row(name, "ERROR", "-", None, "-", False, note=f"{type(e).__name__}: {e}"))
            else:  # not written yet: say so, do not fail the suite
                rows.append(Row(name, "skipped", "-", None, "-", None, note=f"bench/{name}.py not present"))
        except Exception as e:  # one broken benchmark must not hide the others
            traceback.print_exc()
            rows.append(Row(name, "ERROR", "-", None, "-", False, note=f"{type(e).__name__}: {e}"))
        log(f"{name} took {time.perf_counter() - t0:.1f}s")
    import os

    print(f"# python {platform.python_version()} · {os.cpu_count()} CPUs · {platform.platform()} · "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} · suite {time.perf_counter() - t_all:.0f}s"
          f"{' · --quick' if args.quick else ''}")
    print(format_table(rows))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
