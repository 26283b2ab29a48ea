"""Keep a change only when replicated runs show it beats the best: a group-sequential t test.

One run per change, kept when it beats the best by more than `min_improvement`, keeps noise: with
run-to-run (seed) noise sigma ~0.045 bpb about half of all no-op changes beat a 3-run best once.
So `decide` is asked after every run of a candidate and answers keep, discard or replicate:

    improvement = best mean - candidate mean ("min"; the reverse for "max")
    s_ref       = the reference noise: pooled over the campaign's other replicated groups (`sigma`,
                  `sigma_df`) and the best's own runs, never the candidate's
    SE          = s_ref * sqrt(1/n_candidate + 1/n_best)  (Welch when the candidate is far noisier)
    confidence  = P(T_df < (improvement - min_improvement) / SE)

    run 1            discard if worse (P(better than the best at all) < SCREEN_P), else replicate;
                     never keep: one run cannot tell a change from a lucky seed
    runs 2..max-1    reject if the runs vary improbably little for s_ref (F test, NARROW_P): the
                     change does not read the seed a replicate sets, so its replicates confirm
                     nothing; keep early from run MIN_KEEP_RUNS if confidence >= INTERIM_CONFIDENCE
                     (Haybittle-Peto); discard if confidence < FUTILITY_CONFIDENCE; else replicate
    run max_runs     keep iff confidence >= 1 - alpha_final, alpha_final = (1 - `confidence`) less
                     what the early looks spent (1 - INTERIM_CONFIDENCE each): 0.953 at the defaults

Why these choices:
- Seed noise is a property of the training setup, not of one change, so one variance is pooled over
  everything replicated. A campaign with a dozen degrees of freedom tests almost as if sigma were
  known, where a Welch test on 2 + 3 runs would have ~3 df and no power.
- The candidate never sets its own error bar (an adversarial review found why): a change that pins
  its seed has near-identical replicates, which pooled in would shrink the SE (a no-op pinned to
  one seed was kept 13.5 % of the time, 27 % as the first experiment); it is rejected instead
  (tests: <= 0.2 %). A change whose runs swing with the seed is tested with its own spread once
  an F test says it is far noisier (a 3-sigma-noisy no-op: 17.5 % kept before, ~8 % now; no keep
  on two runs, so that test has two degrees of freedom to see it).
- Each look is an exact one-sided t test under normal, equal-variance noise, so by the union bound
  a false keep (true improvement = `min_improvement`) has probability at most 1 - `confidence`. The
  looks share the best's runs and so are strongly correlated: the bound is nearly tight, and the
  futility stop removes few false keeps. Simulated (tests/test_noise.py): ~4.7 % at the defaults;
  keeping at a plain `confidence` whenever a look reaches it compounds to ~10 % over 5 runs.
- The strict interim boundary spends almost nothing early, so the last look stays near nominal.
- The screen and the futility stop are where runs are saved: a clearly worse change costs one run,
  a change that is not ahead after two is dropped. A discard is `inconclusive` unless the change is
  worse by the screen's criterion (at any look): inside the noise it may deserve another try.
- max_runs = 5 is the fewest that gives power >= 0.8 at a true improvement of 2 sigma against a
  3-run best with 12 df of campaign sigma (4 runs: ~0.80, at the edge; 3 runs: ~0.75).

`sigma` must pool groups other than `candidate` and `best` (`pooled_sigma` over the campaign's
other replicated configurations): the best's spread is pooled in here, and counting it twice
overstates the degrees of freedom. `best` should be the runs of the configuration being beaten.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scipy.special import fdtr, fdtrc, stdtr

INTERIM_CONFIDENCE = 0.999  # an early keep before max_runs needs this (Haybittle-Peto: p < 0.001)
SCREEN_P = 0.1  # a first run stops as worse when P(it beats the best at all) is below this
FUTILITY_CONFIDENCE = 0.5  # from the second run on, a candidate below this is not even ahead: stop
MAX_RUNS = 5  # default runs per candidate: the fewest with power >= 0.8 at 2 sigma (module docstring)
NARROW_P = 0.001  # replicates that vary this improbably little for the noise do not read their seed
MIN_KEEP_RUNS = 3  # no keep before this many runs: two runs cannot show a change's own spread
WIDE_P = 0.01  # a candidate this improbably noisier than the reference is judged by its own spread

Verdict = Literal["keep", "discard", "replicate", "reject"]


def pooled_sigma(groups: Sequence[Sequence[float]]) -> tuple[float | None, int]:
    """The pooled within-group standard deviation of `groups` (each the runs of one configuration
    under different seeds) and its degrees of freedom. Groups of one run carry no spread and are
    skipped; (None, 0) when no group has two runs."""
    ss, df = 0.0, 0
    for group in groups:
        values = _values("group", group, allow_empty=True)
        if len(values) >= 2:
            ss += _ss(values)
            df += len(values) - 1
    return (math.sqrt(ss / df), df) if df else (None, 0)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict  # reject: the replicates do not vary with the seed, so they confirm nothing
    confidence: float  # P(candidate beats the best by more than min_improvement); 0.5: no noise estimate
    delta: float  # candidate mean - best mean, metric units, sign as measured
    runs: int  # candidate runs so far
    inconclusive: bool  # a discard inside the noise, not a clearly worse change
    reason: str  # one sentence with numbers, for the log and the proposer's feedback


def decide(
    candidate: Sequence[float],
    best: Sequence[float],
    *,
    sigma: float | None,
    sigma_df: int,
    direction: Literal["min", "max"],
    min_improvement: float = 0.0,
    confidence: float = 0.95,
    max_runs: int = MAX_RUNS,
) -> Decision:
    """Keep, discard or replicate `candidate` against `best` after its latest run (see above)."""
    c, b = _values("candidate", candidate), _values("best", best)
    _check(sigma, sigma_df, direction, min_improvement, confidence, max_runs)
    n, delta = len(c), _mean(c) - _mean(b)
    improvement = -delta if direction == "min" else delta
    # The reference noise never comes from the candidate: the campaign's pooled sigma (other
    # configurations) and the best's own runs. A change that stops reading its seed (replicates
    # near-identical) would otherwise shrink the error bar it is judged by, and one whose runs
    # swing with the seed would be judged by noise smaller than its own.
    ss_ref = (sigma_df * sigma**2 if sigma is not None else 0.0) + _ss(b)
    df_ref = sigma_df + len(b) - 1
    gain = f"improvement {improvement:+.4g} over {len(b)} best runs after {n} run{'s' * (n > 1)}"
    own_ref = df_ref == 0  # a best with one run and no campaign sigma (a ledger from before replicates)
    if own_ref:
        if n == 1:  # one run each: nothing says how large noise is
            return Decision("replicate", 0.5, delta, n, False, f"replicate: {gain}, no noise estimate yet")
        ss_ref, df_ref = _ss(c), n - 1  # the only estimate there is
    s_ref = math.sqrt(ss_ref / df_ref)
    se, df = s_ref * math.sqrt(1 / n + 1 / len(b)), df_ref
    if n >= 2 and s_ref > 0 and not own_ref:
        ratio = (_ss(c) / (n - 1)) / s_ref**2
        if fdtr(n - 1, df_ref, ratio) < NARROW_P:
            why = (f"its {n} runs vary far less than the noise (sd {math.sqrt(ratio) * s_ref:.3g} vs "
                   f"{s_ref:.3g}, P {fdtr(n - 1, df_ref, ratio):.2g}): the change does not read the seed "
                   "a replicate sets, so replicates cannot confirm it")  # fmt: skip
            return Decision("reject", 0.0, delta, n, False, f"reject: {gain}; {why}")
        if fdtrc(n - 1, df_ref, ratio) < WIDE_P:  # far noisier than the reference: Welch
            vc, vb = ratio * s_ref**2 / n, s_ref**2 / len(b)
            se = math.sqrt(vc + vb)
            df = max(1, int((vc + vb) ** 2 / (vc**2 / (n - 1) + vb**2 / df_ref)))
    conf = _p_above(improvement - min_improvement, se, df)
    worse = _p_above(improvement, se, df) < SCREEN_P
    stats = f"{gain} (SE {se:.3g}, df {df}): P(better by >{min_improvement:g}) {conf:.3f}"

    def verdict(v: Verdict, why: str, inconclusive: bool = False) -> Decision:
        return Decision(v, conf, delta, n, inconclusive, f"{v}: {stats}; {why}")

    if n == 1:
        if worse:
            return verdict("discard", f"worse (P(better at all) < {SCREEN_P:g})")
        return verdict("replicate", "one run never decides a keep")
    if n >= max_runs:
        final = 1 - _final_alpha(confidence, max_runs)
        if conf >= final:
            return verdict("keep", f">= {final:.4g} at the last look")
        return verdict("discard", f"below {final:.4g} after {n} runs", inconclusive=not worse)
    if conf >= INTERIM_CONFIDENCE and n >= MIN_KEEP_RUNS:
        return verdict("keep", f">= {INTERIM_CONFIDENCE:g}, the early-keep boundary")
    if conf < FUTILITY_CONFIDENCE:
        return verdict("discard", f"not even ahead (< {FUTILITY_CONFIDENCE:g})", inconclusive=not worse)
    bounds = f"between {FUTILITY_CONFIDENCE:g} and {INTERIM_CONFIDENCE:g}"
    return verdict("replicate", f"{bounds}, run {n + 1} of {max_runs} next")


def _p_above(x: float, se: float, df: int) -> float:
    """P(T_df < x / se): the confidence that the true value exceeds the threshold `x` is measured
    against. A zero SE (identical runs everywhere) makes the sign alone decide."""
    if se == 0.0:
        return 1.0 if x > 0 else 0.0 if x < 0 else 0.5
    return float(stdtr(df, x / se))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _ss(values: list[float]) -> float:
    """Sum of squares about the mean: (n - 1) times the sample variance."""
    m = _mean(values)
    return math.fsum((v - m) ** 2 for v in values)


def _values(name: str, values: Sequence[float], allow_empty: bool = False) -> list[float]:
    """The metric values as floats (plain Python: `decide` runs on a handful of numbers)."""
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a flat sequence of metric values, got {values!r}") from None
    if not allow_empty and not floats:
        raise ValueError(f"{name} is empty: it needs at least one run's metric")
    if not all(map(math.isfinite, floats)):
        raise ValueError(f"{name} has a non-finite metric value: {floats}")
    return floats


def _final_alpha(confidence: float, max_runs: int) -> float:
    """The error left for the last look once each early look (runs 2 .. max_runs - 1) has spent
    1 - INTERIM_CONFIDENCE: by the union bound the whole procedure then errs at most 1 - confidence."""
    return (1 - confidence) - max(max_runs - 2, 0) * (1 - INTERIM_CONFIDENCE)


def check_design(confidence: float, max_runs: int) -> None:
    """ValueError unless `confidence` and `max_runs` make a valid design (checked when a program
    loads, not after its baseline runs are spent)."""
    _check(None, 0, "min", 0.0, confidence, max_runs)


def _check(sigma: float | None, sigma_df: int, direction: str, min_improvement: float,
           confidence: float, max_runs: int) -> None:  # fmt: skip
    if sigma is None and sigma_df != 0:
        raise ValueError(f"sigma_df is {sigma_df} but sigma is None: pass both or neither")
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0 and sigma_df >= 1):
        raise ValueError(f"sigma must be finite and >= 0 with sigma_df >= 1, got {sigma} with df {sigma_df}")
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    if not (math.isfinite(min_improvement) and min_improvement >= 0):
        raise ValueError(f"min_improvement must be finite and >= 0, got {min_improvement}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0.5 and 1, got {confidence}")
    if max_runs < 2:
        raise ValueError(f"max_runs must be at least 2 (a keep needs two runs), got {max_runs}")
    if _final_alpha(confidence, max_runs) < (1 - confidence) / 2:
        raise ValueError(f"max_runs={max_runs} has too many early looks for confidence={confidence}: "
                         f"they would spend over half of its {1 - confidence:.3g} error")  # fmt: skip
