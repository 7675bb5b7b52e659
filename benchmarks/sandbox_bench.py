"""Cost of the HumanEval sandbox per problem: the 164 canonical solutions, run one by one.

    python benchmarks/sandbox_bench.py [--repeats 3]

Prints a table: isolated (namespaces) vs unisolated (rlimits only), median over repeats,
the launcher's start-up included once per process (it is reused across runs)."""

from __future__ import annotations

import argparse
import statistics
import time

from ordermerge.data import humaneval_rows
from ordermerge.evaluate.sandbox import _LAUNCHER, run_program


def one_pass(rows: list[dict], isolate: bool) -> tuple[float, int]:
    _LAUNCHER.stop()  # a cold launcher, as each evaluation job starts with
    t0 = time.perf_counter()
    passed = sum(run_program(r["prompt"] + r["response"], r["tests"], r["entry_point"],
                             prelude=r["prompt"], isolate=isolate).passed for r in rows)
    return (time.perf_counter() - t0) / len(rows), passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rows = humaneval_rows()
    print("| mode | ms per problem (median) | passed |\n|---|---|---|")
    for isolate in (True, False):
        runs = [one_pass(rows, isolate) for _ in range(a.repeats)]
        ms = statistics.median(r[0] for r in runs) * 1e3
        print(f"| {'isolated' if isolate else 'unisolated'} | {ms:.1f} | {runs[0][1]}/{len(rows)} |")


if __name__ == "__main__":
    main()
