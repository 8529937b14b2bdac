"""``python -m jmvae_cupy.gradcheck``: every backward pass of the library against central differences.

    python -m jmvae_cupy.gradcheck --list             # the registered checks
    python -m jmvae_cupy.gradcheck dense relu         # some of them (shell-style patterns work: 'jmvae_kl*')
    python -m jmvae_cupy.gradcheck --all              # all of them; exit code 1 if any fails

Each check builds float64 inputs (off zero mean, ReLU inputs away from the kink, odd non-square
sizes), a *random* upstream gradient dy (never all ones), and compares the analytic gradient of
L = <f(inputs), dy> from the backward pass under test with central differences
(:func:`jmvae_cupy.gradcheck.numerical_gradient`, h = 1e-5), input by input, by
:func:`jmvae_cupy.gradcheck.rel_error` = max|a - n| / max(|a| + |n|).  It reports the largest error
over the inputs and the input it came from.

Every forward and backward is looked up *through its module at call time*
(``dense.dense_backward``, never a name bound by ``from ... import`` when this file was imported),
so a backward monkeypatched in its module is the one that gets checked.

``BACKWARDS`` maps every backward function of the library to the checks that exercise it and
``DERIVATIONS`` to the page of docs/derivations/ that derives it; tests/test_gradcheck_cli.py
holds both to the library (nothing undiscovered, nothing unchecked, no page missing).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time

from ..cli import guarded
from .index import REGISTRY
from .registry import Check

# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def run_check(check: Check) -> tuple[float, str, str]:
    """(max relative error, worst input, error message or '') of one check; an exception is a failure."""
    try:
        errs = check.run()
    except Exception as e:  # a broken backward may raise (wrong shape...): report it as the culprit
        return float("inf"), f"raised {type(e).__name__}: {e}".splitlines()[0][:80], "error"
    if not errs:
        return float("inf"), "(no inputs)", "error"
    worst = max(errs, key=lambda k: (errs[k] != errs[k], errs[k]))  # NaN counts as worst
    err = errs[worst]
    return (float("inf") if err != err else err), worst, ""


def select(patterns: list[str]) -> list[Check]:
    """The checks matching the names or shell-style patterns, in registry order; ValueError on a miss."""
    chosen = []
    for p in patterns:
        hits = [n for n in REGISTRY if fnmatch.fnmatchcase(n, p)]
        if not hits:
            raise ValueError(f"unknown check {p!r} (python -m jmvae_cupy.gradcheck --list names them)")
        chosen += [n for n in hits if n not in chosen]
    return [REGISTRY[n] for n in REGISTRY if n in chosen]


def main(argv: list[str] | None = None) -> int:
    """The command line (exit 0: all passed, 1: a check failed, 2: bad arguments; Ctrl-C: 130, one line)."""
    return guarded(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m jmvae_cupy.gradcheck",
        description="Check backward passes against central differences in float64 (see docs/derivations/).")
    ap.add_argument("names", nargs="*", help="checks to run (shell patterns allowed, e.g. 'jmvae_kl*')")
    ap.add_argument("--all", action="store_true", help="run every registered check")
    ap.add_argument("--list", action="store_true", help="list the checks and exit")
    args = ap.parse_args(argv)
    if args.list:
        width = max(map(len, REGISTRY))
        for c in REGISTRY.values():
            print(f"{c.name:<{width}}  tol {c.tol:.0e}  {c.what}")
        return 0
    if not args.all and not args.names:
        print("gradcheck: name checks to run, or --all (--list names them)", file=sys.stderr)
        return 2
    try:
        checks = list(REGISTRY.values()) if args.all else select(args.names)
    except ValueError as e:
        print(f"gradcheck: {e}", file=sys.stderr)
        return 2
    width = max(len(c.name) for c in checks)
    print(f"{'check':<{width}}  {'max rel err':>11}  {'tol':>7}  result  worst input")
    failed = []
    t0 = time.perf_counter()
    for c in checks:
        err, worst, status = run_check(c)
        ok = not status and err < c.tol
        if not ok:
            failed.append(c.name)
        print(f"{c.name:<{width}}  {err:11.2e}  {c.tol:7.0e}  {'PASS' if ok else 'FAIL'}    {worst}", flush=True)
    dt = time.perf_counter() - t0
    if failed:
        print(f"FAILED {len(failed)} of {len(checks)} checks ({dt:.1f} s): {', '.join(failed)}")
        return 1
    print(f"all {len(checks)} checks passed ({dt:.1f} s)")
    return 0

