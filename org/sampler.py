"""Classical optimizers as proposers: an Optuna sampler over the program's knob space.

A role whose model is `optuna/<name>` (tpe, cmaes, gp, random) proposes without a language model.
Each experiment is one Optuna trial: the sampler picks a value for every knob in the program's
search space, and the proposal sets them all (absolute values, from the best commit).

The space is fixed for a campaign, from its baseline file and the program:
    a knob in `knob_ranges`        that range (log scale when it spans 10x or more and lo > 0)
    an int moved only by x2/x0.5   a power of two, 2**(e-2) .. 2**(e+2) around the baseline's 2**e
    another int                    baseline/2 .. baseline*2
    a float                        baseline/4 .. baseline*4, log scale; 0.0 .. 0.2 when it is 0
    a bool                         False or True
Fixed knobs, seed knobs and strings are never sampled.

The ledger is the record: before every ask, every experiment the study has not been told of is
told, whoever proposed it. A trial asked here gets its experiment's mean metric (its runs, as
judged), or FAIL when it crashed, was rejected or never ran; an experiment proposed by someone
else (the baseline, a centaur's LLM turn) is added as a finished trial from the knob values of its
commit, so TPE and GP learn from every run. The study lives in the campaign directory (a journal
file, append-only): `kill -9` and resume keep it, and an ask for the same experiment and attempt
after a restart returns the trial already asked.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from org.constraint import binding, broken
from org.errors import InputError
from org.ledger import MEASURED
from org.models.names import SAMPLERS
from org.proposal import Knob, KnobValue, knob_literal

# Trials before TPE or GP model the space (random until then). Optuna's default, 10, would make a
# 10-experiment campaign pure random search.
STARTUP_TRIALS = 4
STUDY_FILE = "optuna.journal"
RAN = MEASURED  # statuses whose experiment has a metric to tell


@dataclass(frozen=True)
class Dimension:
    """One knob as a study parameter."""

    knob: Knob  # as in the baseline file
    distribution: Any  # optuna.distributions.BaseDistribution
    pow2: bool = False  # the parameter is the exponent: the knob's value is 2**param

    @property
    def param(self) -> str:
        return f"log2({self.knob.name})" if self.pow2 else self.knob.name

    def value(self, param: Any) -> KnobValue:
        if self.pow2:
            return 2 ** int(param)
        if self.knob.type == "float":
            return float(f"{float(param):.4g}")  # what the file will hold (knob_literal digits=4)
        return param

    def start(self) -> Any:
        """The baseline's value as a parameter, moved into the space when the program's range
        leaves it out (CMA-ES's starting point must lie inside)."""
        value = self.knob.value.bit_length() - 1 if self.pow2 else self.knob.value
        return min(max(value, self.distribution.low), self.distribution.high)

    def param_of(self, value: KnobValue) -> Any | None:
        """The parameter for a knob value a file holds, or None where the space cannot hold it."""
        from optuna.distributions import CategoricalDistribution

        d = self.distribution
        if self.pow2:
            if not (isinstance(value, int) and value > 0 and value & (value - 1) == 0):
                return None
            value = value.bit_length() - 1
        if isinstance(d, CategoricalDistribution):
            return value if value in d.choices else None
        return value if d.low <= value <= d.high else None


def space(program: Any, source: str) -> list[Dimension]:
    """The study's dimensions for `program` whose baseline knob file is `source`."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    spec = program.spec
    # a knob no single move may take under the constraints can still move with others: the study's
    # space is the unconstrained one, and its trials are rejection-sampled (`_ask_new`)
    movable = {k.name for k in program.search_space(source, constrained=False) if k.allowed}
    dims = []
    for k in program.knobs_of(source):
        if k.name not in movable:
            continue  # fixed, a seed, a string, or no move stays inside its range
        moves = set(spec.knob_moves.get(k.name, ()))
        rng = spec.knob_ranges.get(k.name)
        if k.type == "bool":
            dims.append(Dimension(k, CategoricalDistribution([False, True])))
        elif k.type == "int" and moves and moves <= {"x2", "x0.5"} and k.value > 0 and k.value & (k.value - 1) == 0:
            e = k.value.bit_length() - 1
            lo, hi = max(0, e - 2), e + 2
            if rng:
                lo, hi = max(lo, math.ceil(math.log2(max(rng[0], 1)))), min(hi, math.floor(math.log2(rng[1])))
            if lo < hi:
                dims.append(Dimension(k, IntDistribution(lo, hi), pow2=True))
        elif k.type == "int":
            lo, hi = (int(math.ceil(rng[0])), int(math.floor(rng[1]))) if rng else (max(1, k.value // 2), k.value * 2)
            if lo < hi:
                dims.append(Dimension(k, IntDistribution(lo, hi)))
        elif k.type == "float":
            if rng:
                lo, hi = float(rng[0]), float(rng[1])
            elif 0 < k.value < 1:  # a fraction (a beta, a momentum, a dropout) stays below 1
                lo, hi = k.value / 4, min(k.value * 4, 1 - (1 - k.value) / 4)
            elif k.value > 0:
                lo, hi = k.value / 4, k.value * 4
            elif k.value == 0:
                lo, hi = 0.0, 0.2
            else:
                lo, hi = k.value * 4, k.value / 4
            dims.append(Dimension(k, FloatDistribution(lo, hi, log=lo > 0 and hi / lo >= 10)))
    if not dims:
        raise InputError(program.path, "knob_ranges", "a sampler has no knob to sample: every knob is fixed, "
                         "a seed or a string")  # fmt: skip
    return dims


def make_sampler(name: str, seed: int, startup_trials: int, x0: dict[str, Any]) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, multivariate=True)
    if name == "cmaes":  # starts from the baseline; bools go to its independent (random) sampler
        return optuna.samplers.CmaEsSampler(x0=x0, seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r} (samplers: {', '.join(SAMPLERS)})")


@dataclass(frozen=True)
class Suggestion:
    values: dict[str, KnobValue]  # knob -> value, every knob of the space
    trial: int  # the study's trial number
    description: str  # "optuna/tpe trial 4: MATRIX_LR 0.02 -> 0.0314, DEPTH 4 -> 3"
    hypothesis: str  # what the sampler did, in words: never a model's text


class SamplerProposer:
    """One campaign's study: `suggest` for an experiment, after `sync` with the ledger."""

    def __init__(self, model: str, directory: Path, tag: str, program: Any, base_source: str,
                 seed: int | None = None, startup_trials: int | None = None):  # fmt: skip
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.model, self.name = model, model.partition("/")[2]
        self.program = program
        self.dims = space(program, base_source)
        self.constraints = program.constraints
        seed = seed if seed is not None else zlib.crc32(tag.encode())  # replicate campaigns differ
        x0 = {d.param: d.start() for d in self.dims if not _categorical(d)}
        self.sampler = make_sampler(self.name, seed, startup_trials or STARTUP_TRIALS, x0)
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(directory / STUDY_FILE)))
        direction = "minimize" if program.spec.direction == "min" else "maximize"
        self.study = optuna.create_study(study_name=tag, storage=storage, sampler=self.sampler,
                                         direction=direction, load_if_exists=True)  # fmt: skip

    @property
    def distributions(self) -> dict[str, Any]:
        return {d.param: d.distribution for d in self.dims}

    def sync(self, rows: list[dict[str, Any]], source_at: Callable[[str], str | None],
             pending: Collection[int] = ()) -> int:  # fmt: skip
        """Tell the study every experiment in `rows` (the ledger's) it has not been told of; a
        trial asked for an experiment that never ran (`pending` excepted: the one in flight and
        those the pipeline asked ahead) is told FAIL. Returns how many were told."""
        from optuna.trial import TrialState, create_trial

        told = 0
        latest: dict[Any, Any] = {}  # exp -> its trial: the last attempt asked, or the one added
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("repeat") or t.user_attrs.get("infeasible"):
                continue  # told when asked: never an experiment's trial
            n = t.user_attrs.get("exp")
            if n not in latest or t.user_attrs.get("attempt", -1) >= latest[n].user_attrs.get("attempt", -1):
                latest[n] = t
        known = {n for n, t in latest.items() if t.state != TrialState.RUNNING}
        asked = {n: t for n, t in latest.items() if t.state == TrialState.RUNNING}
        for row in rows:
            n = row["n"]
            if n in known:
                continue
            value = row["metric"] if row["status"] in RAN and row["metric"] is not None else None
            if n in asked:
                self.study.tell(asked.pop(n).number, value, state=None if value is not None else TrialState.FAIL)
            else:
                params = self._params(source_at(row["commit"]) if row.get("commit") else None)
                if params is None:
                    continue  # outside the space (a move past a range, an edit-mode change)
                state = TrialState.COMPLETE if value is not None else TrialState.FAIL
                self.study.add_trial(create_trial(state=state, value=value, params=params,
                                                  distributions=self.distributions,
                                                  user_attrs={"exp": n, "by": row.get("role") or ""}))  # fmt: skip
            told += 1
        for n, trial in asked.items():
            if n not in pending:  # asked, never ran (refused at vet, or the campaign moved on)
                self.study.tell(trial.number, state=TrialState.FAIL)
        return told

    def suggest(self, n: int, attempt: int, best_source: str) -> Suggestion:
        """A trial for experiment `n` (its `attempt`-th proposal): the one already asked for it, if
        a restart interrupted it, or a new one. Its knob values and an honest description."""
        from optuna.trial import TrialState

        trial = next((t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                      if t.user_attrs.get("exp") == n and t.user_attrs.get("attempt") == attempt), None)  # fmt: skip
        best = {k.name: k for k in self.program.knobs_of(best_source)}
        if trial is None:
            for stale in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if stale.user_attrs.get("exp") == n:  # an earlier attempt refused before it ran
                    self.study.tell(stale.number, state=TrialState.FAIL)
            point = {name: k.value for name, k in best.items()}
            holding = binding(self.constraints, point)
            number, params = self._ask_new(n, attempt, lambda values: not broken(holding, point | values))
        else:
            number, params = trial.number, trial.params
        values = {d.knob.name: d.value(params[d.param]) for d in self.dims}
        changes = [f"{name} {best[name].expr} -> {knob_literal(best[name], v, digits=4)}"
                   for name, v in values.items() if name in best and v != best[name].value]  # fmt: skip
        finished = sum(t.state == TrialState.COMPLETE and not (t.user_attrs.get("infeasible") or t.user_attrs.get("repeat"))
                       for t in self.study.get_trials(deepcopy=False))  # fmt: skip
        description = f"{self.model} trial {number}: " + (", ".join(changes) or "the best's values")
        hypothesis = (f"{self.name} sampler, trial {number}: {len(changes)} of {len(self.dims)} knobs changed from "
                      f"the best, chosen from {finished} finished trials (no language model)")  # fmt: skip
        return Suggestion(values, number, description, hypothesis)

    def retag(self, was: int, attempt: int, n: int) -> None:
        """A trial asked ahead for experiment `was` runs as experiment `n` (one before it never
        ran): it is `n`'s now, and what was asked for `n` before is told FAIL, so the study pairs
        each result with the values that made it."""
        from optuna.trial import TrialState

        storage = self.study._storage  # optuna keeps per-trial attributes in its storage
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("attempt") == attempt and t.user_attrs.get("exp") in (was, n):  # (again after a kill)
                storage.set_trial_user_attr(t._trial_id, "exp", n)
            elif t.user_attrs.get("exp") == n:
                self.study.tell(t.number, state=TrialState.FAIL)

    def _values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(d.value(params[d.param]) for d in self.dims)

    def _ask_new(self, n: int, attempt: int, feasible: Callable[[dict[str, KnobValue]], bool],
                 tries: int = 200) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """A new trial for experiment `n`. One whose values (as the file will hold them) a finished
        trial already measured is told that trial's result at once and another is asked: the
        duplicate gate would refuse it, and a sampler told only FAIL proposes it again. One whose
        values already failed (a crash, a refusal at vet, a rejected run) is told FAIL again at once:
        TPE and GP leave failed trials out of their model, so they would try the same point again.
        One that breaks a knob constraint the best meets is told without a run (marked
        `infeasible`) a penalty worse than every result measured, FAIL before any: rejection
        sampling, so the study's space is the program's. A FAIL alone would not do: TPE leaves
        failed trials out of its model and, its history unchanged, proposes the same infeasible
        point again. Infeasible trials are never taken for measured or failed points."""
        from optuna.trial import TrialState

        trials = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
                  if set(t.params) == set(self.distributions) and not t.user_attrs.get("infeasible")]  # fmt: skip
        seen = {self._values(t.params): t.value for t in trials if t.state == TrialState.COMPLETE}
        failed = {self._values(t.params) for t in trials if t.state == TrialState.FAIL} - set(seen)
        penalty = self._penalty([t.value for t in trials if t.state == TrialState.COMPLETE])
        for _ in range(tries):
            live = self._ask(n, attempt)
            key = self._values(live.params)
            if not feasible(dict(zip((d.knob.name for d in self.dims), key, strict=True))):
                live.set_user_attr("infeasible", True)
                self.study.tell(live.number, penalty, state=TrialState.FAIL if penalty is None else None)
                continue
            if key not in seen and key not in failed:
                return live.number, live.params
            live.set_user_attr("repeat", True)
            self.study.tell(live.number, seen.get(key), state=TrialState.FAIL if key in failed else None)
        # the space is spent (every point measured, failed or infeasible): one more trial, as
        # asked, for the gates to refuse (the duplicate gate, or the knobs gate)
        live = self._ask(n, attempt)
        return live.number, live.params

    def _ask(self, n: int, attempt: int) -> Any:
        live = self.study.ask(self.distributions)
        live.set_user_attr("exp", n)
        live.set_user_attr("attempt", attempt)
        return live

    def _penalty(self, measured: list[float]) -> float | None:
        """What an infeasible point is told: worse than every result measured, by their spread (a
        tenth of the worst at least), so TPE never counts it among the good trials. None before any."""
        from optuna.study import StudyDirection

        if not measured:
            return None
        lo, hi = min(measured), max(measured)
        margin = max(hi - lo, 0.1 * max(abs(lo), abs(hi)), 1e-6)
        return hi + margin if self.study.direction == StudyDirection.MINIMIZE else lo - margin

    def _params(self, source: str | None) -> dict[str, Any] | None:
        if source is None:
            return None
        try:
            knobs = {k.name: k for k in self.program.knobs_of(source)}
        except InputError:
            return None
        params = {}
        for d in self.dims:
            if d.knob.name not in knobs or knobs[d.knob.name].type != d.knob.type:
                return None
            p = d.param_of(knobs[d.knob.name].value)
            if p is None:
                return None
            params[d.param] = p
        return params


def _categorical(d: Dimension) -> bool:
    from optuna.distributions import CategoricalDistribution

    return isinstance(d.distribution, CategoricalDistribution)
