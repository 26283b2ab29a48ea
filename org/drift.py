"""Drift: the machine changes under a campaign (thermals, a neighbour on the GPU, a driver).

Every `noise.rebaseline_every` experiments the best runs again with the next unused seed. A
result further from its record's mean than DRIFT_SIGMAS standard errors of the difference
(pooled sigma, times sqrt(1 + 1/k) for a record of k runs) is drift, not noise: it is flagged,
the best's earlier runs go stale (`runs.stale`), and the best is re-measured with
`noise.baseline_runs` fresh runs, which judge every later candidate and set the pooled sigma.
A re-run that crashes is recorded as a failed check and changes nothing.
"""

from __future__ import annotations

import json
import statistics

from org.errors import HarnessError
from org.lab import Lab
from org.verdict import noise_estimate, seed_run

DRIFT_SIGMAS = 3.0  # a re-run of the best this far from its record is drift, not noise


def drift_limit(sigma: float | None, record_runs: int) -> float | None:
    """How far one fresh run may land from the mean of `record_runs` runs before it is drift."""
    return None if sigma is None else DRIFT_SIGMAS * sigma * (1 + 1 / record_runs) ** 0.5


def check_drift(lab: Lab, commit: str, n_done: int) -> float | None:
    """The drift check of the best (`commit`) after experiment `n_done`. Returns the best's fresh
    mean when drift made it re-measure, else None. Safe to re-run after a kill: a check already
    recorded for this point is not repeated, only its re-measurement completed."""
    best_n = lab.ledger.kept_experiment(commit)
    if best_n is None:
        raise HarnessError(f"rebaseline: no kept experiment for the best commit {commit[:7]}")
    check = lab.ledger.drift_check(best_n, n_done)
    if check is None:
        # a best recorded before replicates existed has no runs rows: its one recorded metric
        reference = [r["metric"] for r in lab.ledger.runs(best_n) if r["metric"] is not None] or [
            lab.ledger.experiment(best_n)["metric"]]
        sigma, _ = noise_estimate(lab.ledger)
        mean = statistics.fmean(reference)
        value = rerun_best(lab, commit, best_n)
        limit = drift_limit(sigma, len(reference))
        flagged = value is not None and limit is not None and abs(value - mean) > limit
        lab.ledger.record_drift(best_n, n_done, value, mean, sigma, flagged)
        lab.log.info("drift_check", exp=best_n, after=n_done, metric=value, reference=mean, sigma=sigma,
                     limit=limit, flagged=flagged)  # fmt: skip
        if flagged:  # the record no longer describes this machine: only the fresh runs judge
            lab.ledger.mark_stale(best_n, before=lab.ledger.next_replicate(best_n) - 1)
        check = lab.ledger.drift_check(best_n, n_done)
    if not check["flagged"]:
        return None
    want = lab.program.spec.noise.baseline_runs
    while len(fresh := [r["metric"] for r in lab.ledger.runs(best_n) if r["metric"] is not None]) < want:
        if rerun_best(lab, commit, best_n) is None:
            break  # the best no longer runs: the candidates after it will say so
    lab.log.info("remeasured", exp=best_n, runs=len(fresh), mean=statistics.fmean(fresh))
    return statistics.fmean(fresh)


def rerun_best(lab: Lab, commit: str, best_n: int) -> float | None:
    """One more run of the best with the next unused seed, recorded as one of its runs."""
    r = lab.ledger.next_replicate(best_n)
    lab.workspace.reset(commit)
    seeding = seed_run(lab.program, lab.workspace, r)
    res = lab.run_target(commit, best_n, r, seeding.env)
    metric = lab.metric_of(res)
    lab.ledger.record_run(best_n, r, dict(commit=commit, seed=seeding.seed, metric=metric, seconds=res.seconds,
                                          returncode=res.returncode, timed_out=int(res.timed_out),
                                          log=str(res.log_path), summary=json.dumps(res.summary), kind="rebaseline",
                                          cpu_seconds=res.cpu_seconds, isolation=res.network))  # fmt: skip
    return metric
