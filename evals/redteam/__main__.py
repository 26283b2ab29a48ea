"""`python -m evals.redteam [--smoke SECONDS]`: blocked/allowed per case, then a `---` summary."""

from __future__ import annotations

import argparse
import sys

from evals.redteam import run_suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", type=float, default=None, metavar="SECONDS",
                    help="also run the sandboxed smoke gate with this limit (needs the cpu data cache)")
    args = ap.parse_args(argv)
    outcomes = run_suite(args.smoke)
    for o in outcomes:
        mark = "ok  " if o.correct else "MISS"
        verdict = "blocked" if o.blocked else "allowed"
        why = f" [{o.stage}] {o.reason.splitlines()[0][:110]}" if o.blocked else ""
        print(f"{mark} {verdict:<7} {o.case.name:<34}{why}")
    hostile = [o for o in outcomes if o.case.expect == "blocked"]
    legit = [o for o in outcomes if o.case.expect == "allowed"]
    print("---")
    print(f"hostile_cases:        {len(hostile)}")
    print(f"hostile_blocked:      {sum(o.blocked for o in hostile)}")
    print(f"block_rate:           {sum(o.blocked for o in hostile) / max(len(hostile), 1):.3f}")
    print(f"legit_cases:          {len(legit)}")
    print(f"legit_rejected:       {sum(o.blocked for o in legit)}")
    return 0 if all(o.correct for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
