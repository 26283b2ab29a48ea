"""How many baseline runs a campaign's first decisions need: the keep rule (org/noise.py) on
simulated metric streams, with the baseline's own runs as the only noise estimate (what the
first experiments of a campaign have, before other replicated groups pool in).

    python -m evals.bench_keep_rule                       # 3, 4 and 5 baseline runs (~10 s)
    python -m evals.bench_keep_rule --baseline-runs 5 --decisions 20000

For each baseline size: keep rate and candidate runs per decision at no effect (false keeps,
target <= 5 %), at 2, 4 and 9 sigma better (power, target >= 0.8 at 2 sigma) and 4 sigma worse
(should cost one run). Effects are in units of the run-to-run sigma; the streams are N(mu, 1).
tests/test_noise.py holds the rule to its targets with a pooled campaign sigma; this is the
program-level choice (`noise.baseline_runs`) for the experiments that come before one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from org.noise import MAX_RUNS, decide

GAINS = (("null", 0.0), ("2sigma", 2.0), ("4sigma", 4.0), ("9sigma", 9.0), ("worse_4sigma", -4.0))


def simulate(gain: float, baseline_runs: int, n: int, max_runs: int = MAX_RUNS) -> tuple[float, float]:
    """(keep rate, candidate runs per decision) over `n` sequential decisions."""
    rng = np.random.default_rng([int(gain * 10) + 100, baseline_runs, n])
    bests = rng.normal(0.0, 1.0, (n, baseline_runs)).tolist()
    runs = rng.normal(-gain, 1.0, (n, max_runs)).tolist()  # direction min: lower is better
    keeps = used = 0
    for best, cand in zip(bests, runs):
        for k in range(1, max_runs + 1):
            d = decide(cand[:k], best, sigma=None, sigma_df=0, direction="min", max_runs=max_runs)
            if d.verdict != "replicate":
                break
        keeps += d.verdict == "keep"
        used += d.runs
    return keeps / n, used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-runs", type=int, action="append", help="baseline sizes (default 3, 4, 5)")
    ap.add_argument("--decisions", type=int, default=4000, help="decisions per cell (null: 2.5x)")
    args = ap.parse_args()
    t0 = time.time()
    print("---")
    for nb in args.baseline_runs or [3, 4, 5]:
        for name, gain in GAINS:
            keep, runs = simulate(gain, nb, int(args.decisions * (2.5 if gain == 0 else 1)))
            print(f"baseline_{nb}_{name}: keep {keep:.3f}, runs {runs:.2f}")
    print(f"seconds: {time.time() - t0:.1f}")


if __name__ == "__main__":
    main()
