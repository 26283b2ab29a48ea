"""The judge's verdict over an experiment's runs: replicate seeds, the noise estimate, keep or not.

An experiment is one commit run one or more times with different seeds. The baseline runs
`noise.baseline_runs` times. A candidate runs once; unless that run is clearly worse it runs
again with the next seed until `org.noise.decide` can say keep or discard (at most
`1 + noise.max_replicates` runs). The noise is pooled from every other experiment's replicates,
never from the candidate's own runs alone: a change that stops reading its seed (every replicate
identical) cannot shrink the error bar it is judged by.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from org.errors import HarnessError
from org.knobs import set_knobs
from org.ledger import Ledger
from org.noise import decide, pooled_sigma
from org.program import Program
from org.runner import RunResult, metric_from, parse_number
from org.workspace import Workspace

RESCORE_TOLERANCE = 5e-4  # relative: the harness's re-score of a keep's saved models vs what its runs printed


@dataclass(frozen=True)
class Seeding:
    """How replicate `replicate` of a commit is seeded: its seed, and env vars to add."""

    seed: int | None  # None: the commit has no seed to change (the change removed the seed knob)
    env: dict[str, str]


def seed_run(program: Program, workspace: Workspace, replicate: int) -> Seeding:
    """Seed the worktree (checked out at the experiment's commit) for run `replicate`: replicate r
    runs with the first run's seed + r, so every configuration sees the same seeds. The knob edit
    is uncommitted; the caller resets the worktree after the run."""
    noise = program.spec.noise
    if noise.seed_env:  # set on every run, the first too: the target's own default never counts
        return Seeding(seed=replicate, env={noise.seed_env: str(replicate)})
    if not noise.seed_knob:
        return Seeding(seed=None if replicate else 0, env={})
    source = workspace.read(program.knob_path)
    knob = program.seed_knob(source)
    if knob is None:
        return Seeding(seed=None, env={})
    if replicate:
        workspace.write(program.knob_path, set_knobs(source, {knob.name: knob.value + replicate}, program.path,
                                                             program.spec.knob_style))
    return Seeding(seed=int(knob.value) + replicate, env={})


@dataclass(frozen=True)
class Judgement:
    status: Literal["keep", "discard", "replicate", "reject"]  # reject: replicates ignore the seed
    metric: float  # the mean of the runs so far
    runs: int
    sd: float | None  # the runs' own standard deviation (None for one run)
    delta: float | None  # mean minus the parent's mean (None for the baseline)
    confidence: float | None  # P(better than the parent by more than min_improvement)
    inconclusive: bool  # a discard inside the noise: not evidence that the change hurts
    reason: str


def noise_estimate(ledger: Ledger, exclude: tuple[int, ...] = ()) -> tuple[float | None, int]:
    """Pooled run-to-run standard deviation over every recorded experiment with replicates but
    `exclude` (the judge excludes the best, whose spread `decide` pools itself, and the candidate,
    whose spread never sets its own error bar)."""
    return pooled_sigma(ledger.run_groups(exclude=exclude))


def judge_runs(program: Program, ledger: Ledger, n: int, best_n: int | None) -> Judgement:
    """The verdict on experiment `n` from its recorded runs, against experiment `best_n`'s runs."""
    spec, noise = program.spec, program.spec.noise
    values = [r["metric"] for r in ledger.runs(n)]
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else None
    if n > 0 and best_n is None:
        raise HarnessError(f"experiment {n}: the ledger has no kept experiment for the best commit; "
                           "refusing to judge against nothing")  # fmt: skip
    if n == 0:
        if len(values) < noise.baseline_runs:
            return Judgement("replicate", mean, len(values), sd, None, None, False,
                             f"baseline run {len(values)} of {noise.baseline_runs}")  # fmt: skip
        return Judgement("keep", mean, len(values), sd, None, None, False, "the unmodified target")
    # a best recorded before replicates existed has no runs rows: its one recorded metric
    best = [r["metric"] for r in ledger.runs(best_n) if r["metric"] is not None] or [
        ledger.experiment(best_n)["metric"]]
    delta = mean - statistics.fmean(best)
    if not noise.replicated:  # the single-run rule, for deterministic targets
        kept = program.better(mean, statistics.fmean(best))
        return Judgement("keep" if kept else "discard", mean, 1, None, delta, None, False,
                         "better than the best" if kept else "not better than the best")  # fmt: skip
    twins = _reproduced(ledger.runs(n), ledger.runs(best_n)) if noise.deterministic else []
    if twins:
        seeds = " and ".join(f"{r['seed']} ({r['metric']:.6f})" for r in twins)
        return Judgement("discard", mean, len(values), sd, delta, None, True,
                         f"discard: no effect: seeds {seeds} gave to the last digit what the best's runs with those "
                         "seeds gave; the change does not change what is trained")  # fmt: skip
    sigma, df = noise_estimate(ledger, exclude=(n, best_n))
    d = decide(values, best, sigma=sigma, sigma_df=df, direction=spec.direction,
               min_improvement=spec.min_improvement, confidence=noise.confidence,
               max_runs=1 + noise.max_replicates)  # fmt: skip
    return Judgement(d.verdict, mean, len(values), sd, delta, d.confidence, d.inconclusive, d.reason)


def _reproduced(candidate: list[dict], best: list[dict]) -> list[dict]:
    """The candidate's first two runs, when each gave exactly the metric the best's run with the
    same seed gave; else []. On a deterministic budget (the cpu preset's FLOPs) that is a change
    with no effect (a rename, a knob rounded back to the same model): two runs say so, where the
    keep rule would spend up to its maximum telling a zero effect from noise. Two, not one: a
    change can leave one seed's run untouched and still act on another's (a guard against a loss
    spike that this seed never has). Asked only where the program says its runs are deterministic
    (`noise.deterministic`); it can only discard, and the discard is inconclusive: noted as inside
    the noise, so the move is not blocked where it would act (another model, another campaign)."""
    if len(candidate) < 2:
        return []
    theirs = {r["seed"]: r["metric"] for r in best if r["metric"] is not None}
    firsts = candidate[:2]
    if all(r["metric"] is not None and theirs.get(r["seed"]) == r["metric"] for r in firsts):
        return firsts
    return []


@dataclass(frozen=True)
class TestJudgement:
    metric: float | None  # the held-out score (None: none came back; `reason` says why)
    rescored: float | None  # the keep's metric as the harness re-scored its saved models, if printed
    reason: str  # why there is no test score ('' when there is)
    rejected: str  # why the keep must be rejected after all ('' when it stands)


def judge_test(program: Program, reported: list[float], res: RunResult) -> TestJudgement:
    """What the test command's output means for a keep whose saved models' runs printed
    `reported` (one metric per model, in the order the models were given). The test score sits
    beside the verdict; the keep is rejected only when the harness refused its saved models
    (`rejected:` in the test command's block: a scoring check failed) or re-scored one of them on
    val further from what its run printed than float noise (a forged printout). A test command
    that prints no re-scores (`<metric>_1`, ... or `<metric>` for the mean) is not checked, unless
    the program has a model server (the locked evaluator): then a keep whose test gives no finite
    score or re-score is rejected."""
    metric = metric_from(res, program.test_key, None)
    summary = res.summary if res.returncode == 0 and not res.timed_out else {}
    refused = summary.get("rejected", "")
    key = program.spec.metric
    rescored = parse_number(summary.get(key)) if metric is not None else None
    pairs = [(i, parse_number(summary.get(f"{key}_{i}")), r) for i, r in enumerate(reported, 1)]
    if metric is not None and rescored is not None and not any(v is not None for _, v, _ in pairs) and reported:
        pairs = [(0, rescored, statistics.fmean(reported))]  # only the mean was re-scored
    reason = "" if metric is not None or refused else (
        "no saved models (the runs saved none: see their logs)" if not reported else
        f"the test command gave no '{program.test_key}' (exit {res.returncode}, timed out: {res.timed_out}); "
        f"see {res.log_path}")  # fmt: skip
    rejected = f"the harness refused the saved models: {refused}" if refused else ""
    if violations := getattr(res, "violations", None):  # train.py's code runs in the test process too
        metric, rejected = None, f"the test run broke the sandbox: {'; '.join(violations)}"
    for i, value, printed in pairs if metric is not None and not rejected else []:
        if value is not None and abs(value - printed) > RESCORE_TOLERANCE * max(1.0, abs(printed)):
            which = f"model {i}'s run" if i else "the runs (on average)"
            rejected = (f"forged metric: {which} printed {key} {printed:.6f}, the harness re-scored the saved "
                        f"model at {value:.6f}")  # fmt: skip
            break
    if program.spec.model_server and reported and not rejected:
        # The locked evaluator fails closed: a keep its test cannot verify (no finite test score, a
        # model not re-scored) is rejected, never kept untested. A NaN, a crash, a server that
        # stops answering: each is something a model's code can choose.
        missing = [i for i, value, _ in pairs if value is None]
        if metric is None or missing:
            why = reason or f"no finite re-score of model {missing[0]}" if missing else reason
            metric, rejected = None, f"the keep's test could not verify it: {why or 'no finite test score'}"
    return TestJudgement(metric, rescored, reason, rejected)
