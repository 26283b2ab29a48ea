"""The keep rule under seed noise: its error rates measured on a simulated runner, and its units.

The runner draws each metric from N(mu, SIGMA). A decision replicates the best 3 times (the
baseline), estimates sigma from the campaign's other replicated groups (6 groups of 3: 12 df, drawn
too, so the estimate is as wrong as a real one), then runs the candidate and asks `decide` after
every run until it keeps or discards. `python tests/test_noise.py` prints the whole table.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pytest

from org.noise import MAX_RUNS, decide, pooled_sigma

SIGMA = 0.045  # run-to-run noise of val_bpb
BEST_MU = 1.0
BEST_RUNS = 3
CAMPAIGN_GROUPS = (6, 3)  # groups x runs: 12 df for the campaign's sigma estimate
DECISIONS = 2000  # per cell of the table: power and run counts to about +-0.01
# The false-keep rate at the default sits near 4.7 %, just under its 5 % bound: 10,000 null decisions
# measure it to +-0.2 % (one standard error), so "<= 5 %" is a claim about the rule, not the seed.
NULL_DECISIONS = 10_000


@dataclass(frozen=True)
class Rates:
    keep: float  # fraction of decisions that kept
    one_run: float  # fraction decided after a single candidate run
    mean_runs: float  # candidate runs per decision


@functools.cache
def simulate(gain: float, max_runs: int = MAX_RUNS, campaign: bool = True, peek: bool = False,
             n: int = DECISIONS) -> Rates:  # fmt: skip
    """`n` full sequential decisions for a candidate whose true mean is `gain` sigmas better.
    `peek` also keeps whenever a look reaches what the last look needs: the rule without its
    interim boundary."""
    rng = np.random.default_rng([int(gain * 10) + 100, max_runs, campaign, peek, n])
    bests = rng.normal(BEST_MU, SIGMA, (n, BEST_RUNS)).tolist()
    groups = rng.normal(0.0, SIGMA, (n, *CAMPAIGN_GROUPS)).tolist()
    runs = rng.normal(BEST_MU - gain * SIGMA, SIGMA, (n, max_runs)).tolist()
    keeps, used = [], []
    for best, group, cand in zip(bests, groups, runs):
        sigma, df = pooled_sigma(group) if campaign else (None, 0)
        for k in range(1, max_runs + 1):
            d = decide(cand[:k], best, sigma=sigma, sigma_df=df, direction="min", max_runs=max_runs)
            if peek and k >= 2 and d.verdict == "replicate":
                d = decide(cand[:k], best, sigma=sigma, sigma_df=df, direction="min", max_runs=k)
                d = d if d.verdict == "keep" else replace(d, verdict="replicate")
            if d.verdict != "replicate":
                break
        assert d.verdict != "replicate", f"no verdict after max_runs={max_runs}: {d}"
        keeps.append(d.verdict == "keep")
        used.append(d.runs)
    return Rates(keep=float(np.mean(keeps)), one_run=float(np.mean(np.equal(used, 1))),
                 mean_runs=float(np.mean(used)))  # fmt: skip


def null(max_runs: int = MAX_RUNS, campaign: bool = True) -> Rates:
    """The null case (no true improvement), with NULL_DECISIONS where the rate is asserted."""
    return simulate(0.0, max_runs, campaign, n=NULL_DECISIONS if max_runs == MAX_RUNS else DECISIONS)


CASES = [("null", 0.0), ("1 sigma", 1.0), ("2 sigma", 2.0), ("4 sigma worse", -4.0)]


def table() -> str:
    """Keep rate, runs per decision and the share decided on one run, per true improvement."""
    head = f"{'noise estimate':<22}{'max_runs':>9}  " + "  ".join(f"{c:>21}" for c, _ in CASES)
    sub = f"{'':<31}  " + "  ".join(f"{'keep   runs  1-run':>21}" for _ in CASES)
    lines = [head, sub]
    for campaign, label in ((True, "campaign (12 df)"), (False, "baseline only (2 df)")):
        for max_runs in (3, 4, 5):
            cells = [null(max_runs, campaign) if g == 0 else simulate(g, max_runs, campaign) for _, g in CASES]
            lines.append(f"{label:<22}{max_runs:>9}  " + "  ".join(
                f"{r.keep:>7.3f}{r.mean_runs:>7.2f}{r.one_run:>7.2f}" for r in cells))
    return "\n".join(lines)


# The simulated error rates: what the module docstring promises.


def test_false_keeps_stay_under_five_percent():
    assert null().keep <= 0.05


def test_power_at_two_sigma_with_the_default_max_runs():
    assert simulate(2.0).keep >= 0.8


def test_fewer_runs_would_not_reach_the_power():
    """MAX_RUNS is the fewest that reaches power 0.8 at 2 sigma; 3 runs clearly do not."""
    assert simulate(2.0, 3).keep < 0.8 <= simulate(2.0, MAX_RUNS).keep


def test_clearly_worse_changes_spend_one_run():
    assert simulate(-4.0).one_run >= 0.95


def test_first_experiment_with_only_the_baseline_as_noise_estimate():
    """Two df of noise estimate: power is lower (reported, not asserted), false keeps stay rare."""
    assert null(campaign=False).keep <= 0.05


def test_the_table_is_printed(capsys):
    with capsys.disabled():
        print("\n" + table())


def test_the_simulation_has_teeth():
    """Today's rule (keep when one run beats the best) keeps about half of all no-op changes in the
    same simulated campaign, and the sequential rule without its interim boundary (keep at 0.95
    whenever a look reaches it) compounds its error across the looks. A simulation that could not
    see either would pass anything."""
    rng = np.random.default_rng(7)
    best = rng.normal(BEST_MU, SIGMA, (NULL_DECISIONS, BEST_RUNS)).mean(axis=1)
    naive = rng.normal(BEST_MU, SIGMA, NULL_DECISIONS) < best
    assert naive.mean() > 0.4
    assert simulate(0.0, peek=True).keep > 0.07 > null().keep


# Units.


def test_pooled_sigma_by_hand():
    # squares about the means: [1, 3] -> 2; [2, 4, 6] -> 8; [10] carries none
    sigma, df = pooled_sigma([[1.0, 3.0], [2.0, 4.0, 6.0], [10.0]])
    assert df == 3 and sigma == pytest.approx((10 / 3) ** 0.5)
    assert pooled_sigma([[1.0], [2.0], []]) == (None, 0)
    assert pooled_sigma([]) == (None, 0)


def test_direction_max_mirrors_min():
    best = [0.50, 0.52, 0.51]
    up = [0.60, 0.61]
    kw = dict(sigma=0.01, sigma_df=12, max_runs=2)
    assert decide(up, best, direction="max", **kw).verdict == "keep"
    d = decide(up, best, direction="min", **kw)
    assert d.verdict == "discard" and not d.inconclusive and d.delta == pytest.approx(0.095)
    mirrored = decide([-x for x in up], [-x for x in best], direction="min", **kw)
    assert mirrored.confidence == pytest.approx(decide(up, best, direction="max", **kw).confidence)


def test_min_improvement_shifts_the_test():
    best, cand = [1.00, 1.01, 0.99], [0.97, 0.96]  # 0.035 better
    kw = dict(sigma=0.01, sigma_df=12, direction="min", max_runs=2)
    plain = decide(cand, best, **kw)
    assert plain.verdict == "keep"
    shifted = decide(cand, best, min_improvement=0.035, **kw)
    assert shifted.confidence == pytest.approx(0.5) and shifted.verdict == "discard" and shifted.inconclusive
    assert decide(cand, best, min_improvement=0.06, **kw).confidence < 0.01


def test_one_run_is_never_kept():
    d = decide([0.5], [1.0, 1.01, 0.99], sigma=0.01, sigma_df=12, direction="min")
    assert d.verdict == "replicate" and d.confidence > 0.9999 and d.runs == 1
    clearly_worse = decide([1.2], [1.0, 1.01, 0.99], sigma=0.01, sigma_df=12, direction="min")
    assert clearly_worse.verdict == "discard" and not clearly_worse.inconclusive


def test_identical_runs_let_the_sign_decide():
    kw = dict(sigma=0.0, sigma_df=4, direction="min", max_runs=2)
    assert decide([0.9, 0.9], [1.0, 1.0], **kw).verdict == "keep"
    assert decide([1.0, 1.0], [1.0, 1.0], **kw).confidence == 0.5
    assert decide([1.1], [1.0, 1.0], **kw).verdict == "discard"


def test_pooled_sigma_rejects_non_numbers():
    with pytest.raises(ValueError, match="group has a non-finite"):
        pooled_sigma([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="group must be a flat sequence"):
        pooled_sigma([[1.0, "fast"]])


def test_no_noise_estimate_asks_for_a_replicate():
    d = decide([5.0], [1.0], sigma=None, sigma_df=0, direction="min")
    assert d.verdict == "replicate" and "no noise estimate" in d.reason


def test_interim_keep_is_strict_and_the_last_look_is_not():
    best = [1.00, 1.01, 0.99]
    kw = dict(sigma=0.01, sigma_df=12, direction="min", max_runs=4)
    modest = [0.985, 0.975]  # ~0.02 better: confident, but not at the early-keep boundary
    assert 0.95 < decide(modest, best, **kw).confidence < 0.999
    assert decide(modest, best, **kw).verdict == "replicate"
    assert decide(modest + [0.98, 0.98], best, **kw).verdict == "keep"
    assert decide([0.951, 0.949], best, **kw).verdict == "replicate"  # never a keep on two runs
    assert decide([0.951, 0.949, 0.95], best, **kw).verdict == "keep"  # far ahead: early keep
    behind = decide([1.01, 1.0], best, **kw)  # behind, but inside the noise
    assert behind.verdict == "discard" and behind.inconclusive and "not even ahead" in behind.reason
    short = decide(modest + [1.0, 1.0], best, **kw)  # ahead, not enough by the last look
    assert 0.5 < short.confidence < 0.95 and short.verdict == "discard" and short.inconclusive


@pytest.mark.parametrize("kwargs,message", [
    (dict(candidate=[]), "candidate is empty"),
    (dict(best=[]), "best is empty"),
    (dict(candidate=[1.0, float("nan")]), "candidate has a non-finite"),
    (dict(best=[float("inf")]), "best has a non-finite"),
    (dict(max_runs=1), "max_runs must be at least 2"),
    (dict(confidence=0.5), "confidence must lie strictly between 0.5 and 1"),
    (dict(confidence=1.0), "confidence must lie strictly between 0.5 and 1"),
    (dict(direction="down"), "direction must be 'min' or 'max'"),
    (dict(sigma=None), "sigma_df is 12 but sigma is None"),
    (dict(sigma=0.01, sigma_df=0), "sigma_df >= 1"),
    (dict(min_improvement=-0.1), "min_improvement must be finite and >= 0"),
    (dict(confidence=0.99, max_runs=8), "too many early looks"),
    (dict(candidate=[[1.0, 2.0]]), "candidate must be a flat sequence"),
])  # fmt: skip
def test_bad_input_names_the_problem(kwargs, message):
    args = dict(candidate=[1.0], best=[1.0, 1.1], sigma=0.01, sigma_df=12, direction="min") | kwargs
    with pytest.raises(ValueError, match=message):
        decide(args.pop("candidate"), args.pop("best"), **args)


if __name__ == "__main__":
    print(table())


def test_a_change_that_stops_reading_its_seed_gains_nothing():
    """Identical replicates (the change hard-codes its seed) have zero spread: they confirm
    nothing, and the candidate is rejected, not judged by an error bar it shrank itself."""
    best = [1.00, 1.03, 0.97]
    honest = decide([0.97, 1.00, 0.94, 0.97], best, sigma=0.03, sigma_df=12, direction="min", max_runs=4)
    frozen = decide([0.97, 0.97, 0.97, 0.97], best, sigma=0.03, sigma_df=12, direction="min", max_runs=4)
    assert honest.verdict != "reject"
    assert frozen.verdict == "reject" and "does not read the seed" in frozen.reason
    first = decide([0.9, 0.9], best, sigma=None, sigma_df=0, direction="min")  # the first experiment too
    assert first.verdict == "reject"


def _attack(spread: float, n: int = 2000) -> Rates:
    """A no-op change whose replicates all share one noise draw (the seed pinned) plus `spread`
    sigma of what is left (wall-clock jitter): the sequential procedure, campaign sigma known."""
    rng = np.random.default_rng(7)
    keeps, used = [], []
    for _ in range(n):
        best = rng.normal(BEST_MU, SIGMA, BEST_RUNS).tolist()
        sigma, df = pooled_sigma(rng.normal(0.0, SIGMA, CAMPAIGN_GROUPS).tolist())
        pinned = rng.normal(BEST_MU, SIGMA) + rng.normal(0.0, spread * SIGMA, MAX_RUNS)
        for k in range(1, MAX_RUNS + 1):
            d = decide(pinned[:k].tolist(), best, sigma=sigma, sigma_df=df, direction="min")
            if d.verdict != "replicate":
                break
        keeps.append(d.verdict == "keep")
        used.append(d.runs)
    return Rates(keep=float(np.mean(keeps)), one_run=float(np.mean(np.equal(used, 1))),
                 mean_runs=float(np.mean(used)))  # fmt: skip


def test_pinning_the_seed_does_not_buy_keeps():
    """Without the spread check a pinned no-op was kept 13.5 % of the time (adversarial review)."""
    for spread in (0.0, 0.02):
        assert _attack(spread).keep <= 0.02, spread


def test_a_candidate_far_noisier_than_the_reference_is_judged_by_its_own_spread():
    """A change that swings with the seed (3 sigma) is not judged by the campaign's smaller sigma."""
    rng = np.random.default_rng(11)
    keeps = []
    for _ in range(2000):
        best = rng.normal(BEST_MU, SIGMA, BEST_RUNS).tolist()
        sigma, df = pooled_sigma(rng.normal(0.0, SIGMA, CAMPAIGN_GROUPS).tolist())
        wild = rng.normal(BEST_MU, 3 * SIGMA, MAX_RUNS).tolist()
        for k in range(1, MAX_RUNS + 1):
            d = decide(wild[:k], best, sigma=sigma, sigma_df=df, direction="min")
            if d.verdict != "replicate":
                break
        keeps.append(d.verdict == "keep")
    assert np.mean(keeps) <= 0.08  # 17.5 % before the Welch switch
