"""The Lab: everything a graph node needs that is not checkpointed state.

Passed to the graph as its LangGraph runtime context. It is the campaign directory (ledger, event
log, run logs, results.tsv) and the composition of the parts the nodes use:
    calls     model calls for the roles (org/calls.py; the client is injected: tests script it)
    recall    memory context, repeats of earlier experiments, notes (org/recall.py)
    stop      when the campaign ends by itself (the program's StopSpec with CLI overrides)
    overhead  seconds per node, model calls and runs (org/overhead.py)
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from org import manifest
from org.calls import Calls, StructuredClient
from org.ledger import Ledger, write_tsv
from org.measure import CHECKPOINT, Caps, measure
from org.overhead import Overhead
from org.program import Program, StopSpec
from org.recall import Recall
from org.roles import Org
from org.runner import metric_from
from org.sandbox import SandboxResult
from org.slots import Running, Slot, executor_for, pinned, plan
from org.verdict import seed_run
from org.workspace import Workspace


@dataclass
class Lab:
    tag: str
    dir: Path  # the campaign directory
    program: Program
    org: Org
    workspace: Workspace
    ledger: Ledger
    models: InitVar[StructuredClient]  # becomes `calls`
    memory: Any  # memory.NoteStore (its API is the memory contract)
    stop: StopSpec
    started_at: float  # epoch seconds when the campaign was created
    base_commit: str  # the repo HEAD the campaign branched from
    protected_hashes: dict[str, str]
    log: Any  # structlog bound logger writing this campaign's events.jsonl
    sandboxed: bool = True  # runs under bubblewrap (org/bwrap.py); False: process isolation only
    progress: Callable[..., None] = lambda **_: None
    session_started: float = field(default_factory=time.time)  # this process's start (a night's)
    overhead: Overhead = field(default_factory=Overhead)
    event_file: Any = None  # the open events.jsonl behind `log`
    calls: Calls = field(init=False)
    recall: Recall = field(init=False)
    _samplers: dict[str, Any] = field(init=False, default_factory=dict)
    _slots: list[Slot] | None = field(init=False, default=None)
    _executor: Any = field(init=False, default=None)
    busy: dict[int, Running] = field(init=False, default_factory=dict)  # slot index -> its run
    # first runs of proposals the pipeline has ready, started on free slots: commit -> its run
    speculative: dict[str, Running] = field(init=False, default_factory=dict)

    def __post_init__(self, models: StructuredClient) -> None:
        self.calls = Calls(self.program, self.org, models, self.ledger, self.log, self.overhead, stop=self.stop)
        self.recall = Recall(self.tag, self.program, self.workspace, self.ledger, self.memory)

    def sampler(self, kind: str) -> Any:
        """The Optuna study behind role `kind` (a sampler), over the knob space of the baseline's
        file; opened once, kept in the campaign directory (org/sampler.py)."""
        if kind not in self._samplers:
            from org.sampler import SamplerProposer

            base = self.ledger.experiment(0)
            source = self.workspace.show(base["commit"], self.program.knob_path) if base else None
            role = self.org.roles[kind].spec
            self._samplers[kind] = SamplerProposer(
                role.model, self.dir, self.tag, self.program,
                source if source is not None else self.workspace.read(self.program.knob_path),
                seed=role.seed, startup_trials=role.startup_trials)  # fmt: skip
        return self._samplers[kind]

    # ---- the campaign directory --------------------------------------------------------------

    @property
    def results_tsv(self) -> Path:
        return self.dir / "results.tsv"

    @property
    def run_pid_file(self) -> Path:
        return self.dir / "run.pid"

    def run_log(self, n: int, replicate: int = 0) -> Path:
        """runs/0007.log for experiment 7's first run, runs/0007.r2.log for its second replicate."""
        return self.dir / "runs" / (f"{n:04d}.log" if replicate == 0 else f"{n:04d}.r{replicate}.log")

    def checkpoint(self, n: int, replicate: int = 0) -> Path:
        """Where run `replicate` of experiment `n` saves its model for the held-out test (0007.r2.pt)."""
        return self.run_log(n, replicate).with_suffix(".pt")

    # ---- runs and the slots they go to (org/slots.py) -----------------------------------------

    @property
    def slots(self) -> list[Slot]:
        """The program's slots, planned on first use (org/slots.py)."""
        if self._slots is None:
            self._slots = plan(self.program, self.dir, self.workspace)
        return self._slots

    def launch(self, slot: Slot, commit: str, n: int, env: dict[str, str], log: Path, saved: Path,
               inline: bool = False) -> Running:  # fmt: skip
        """Start one measurement (org/measure.py: train, then evaluate in a separate sandbox) of
        `slot`'s worktree as it stands (at `commit`, seeded), logging to `log`; its saved model
        goes to `saved`. A baseline run is unbounded but for the timeout; later runs are capped by
        its compute. `inline`: run it here and now (no executor)."""
        manifest.verify(self.data_manifest, self.data_roots())  # InputError: the data changed under us
        saved.unlink(missing_ok=True)  # never one an earlier attempt left
        job = functools.partial(measure, self.program, slot.workspace.path, {**env, **slot.env}, log,
                                log.with_suffix(".out"), self.sandboxed, self.program.run_timeout_s,
                                pid_file=slot.pid_file, protected=self.protected_hashes,
                                caps=self.caps() if n > 0 else Caps())  # fmt: skip
        if inline:  # on the slot's cores all the same (a drift re-run is measured as the runs it checks)
            future: Future = Future()
            future.set_result(pinned(slot.cpus, job))
        else:
            if self._executor is None:
                self._executor = executor_for(self.program, self.slots)
            future = self._executor.submit(slot, job)
        running = Running(slot, commit, future, log, saved)
        self.busy[slot.index] = running
        return running

    def finish(self, running: Running) -> SandboxResult:
        """Wait for a run; keep its saved model at its `saved` path; count its time."""
        res = running.future.result()
        out = running.log.with_suffix(".out")
        if (out / CHECKPOINT).is_file() and not (out / CHECKPOINT).is_symlink():
            (out / CHECKPOINT).replace(running.saved)
        shutil.rmtree(out, ignore_errors=True)
        if self.busy.get(running.slot.index) is running:
            del self.busy[running.slot.index]
        self.overhead.add("run", res.seconds)
        return res

    def free_slots(self) -> list[Slot]:
        """Slots with nothing running. With one slot, none: it runs only the experiment in flight,
        in the campaign's worktree. With more, every slot has a worktree of its own, and any of
        them takes the experiment in flight, a replicate, or a first run made ahead."""
        if len(self.slots) == 1:
            return []
        return [s for s in self.slots if s.index not in self.busy or self.busy[s.index].future.done()]

    def free_slot(self) -> Slot:
        """A slot with nothing running: with one slot, it (the graph runs one thing at a time
        there); with more, the first free one, once one is (first runs made ahead end on their own)."""
        if len(self.slots) == 1:
            return self.slots[0]
        while not (free := self.free_slots()):
            wait([r.future for r in self.busy.values()], return_when=FIRST_COMPLETED)
        return free[0]

    def start_target(self, commit: str, n: int, replicate: int, env: dict[str, str], inline: bool = False) -> Running:
        """Start run `replicate` of experiment `n`: with one slot in the campaign's worktree as it
        stands (at `commit`, seeded for `replicate`); with more on the first free slot, its worktree
        reset to `commit` and seeded alike (when every slot is busy with first runs made ahead, the
        first to end frees one). The model it saves is kept at `checkpoint(n, replicate)`."""
        slot = self.free_slot()
        if len(self.slots) > 1:
            slot.workspace.reset(commit)
            seed_run(self.program, slot.workspace, replicate)
        return self.launch(slot, commit, n, env, self.run_log(n, replicate), self.checkpoint(n, replicate), inline)

    def end_target(self, running: Running, commit: str) -> SandboxResult:
        """Its result, once done; the campaign's worktree reset to `commit` (the seed edit and
        whatever the run left are not the change)."""
        res = self.finish(running)
        self.workspace.reset(commit)
        return res

    def run_target(self, commit: str, n: int, replicate: int, env: dict[str, str],
                   meanwhile: Callable[[Future], None] | None = None) -> SandboxResult:  # fmt: skip
        """Measure the target once (`start_target`), logging to its run log. With `meanwhile`, the
        run goes to the executor and `meanwhile(future)` works on this thread (the pipeline and the
        other slots: the ledger, memory and model calls stay here) until the run is done."""
        running = self.start_target(commit, n, replicate, env, inline=meanwhile is None)
        if meanwhile is not None:
            meanwhile(running.future)
        return self.end_target(running, commit)

    def close_runs(self) -> None:
        """Wait for runs still going on other slots (first runs made ahead), then stop the executor."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    @property
    def data_manifest(self) -> Path:
        return self.dir / "data-manifest.json"

    def data_roots(self) -> list[Path]:
        """Everything any phase's sandbox reads from the data cache: hashed after setup."""
        return sorted({p for phase in ("run", "evaluate", "test") for p in self.program.sandbox_reads(phase)})

    def caps(self) -> Caps:
        """The untimed-compute bounds from the baseline's current runs."""
        runs = [r for r in self.ledger.runs(0) if r["metric"] is not None]
        return Caps.from_baseline(self.program, [r["cpu_seconds"] for r in runs if r.get("cpu_seconds")],
                                  [r["seconds"] for r in runs])  # fmt: skip

    def metric_of(self, res: SandboxResult) -> float | None:
        """The run's metric, or None: it crashed, or the sandbox rejected it."""
        spec = self.program.spec
        return None if res.rejected else metric_from(res, spec.metric, spec.parse.regex)

    def prune_checkpoints(self, keep: list[int]) -> None:
        """Delete saved models of every experiment but those in `keep` (the best, and a fan-out
        round's pending ones): only a keep is tested, and a gpu model is ~200 MB a run."""
        prefixes = tuple(f"{n:04d}." for n in keep)
        for path in (self.dir / "runs").glob("*.pt*"):  # *.pt.tmp: a save a kill cut short
            if path.suffix == ".tmp" or not path.name.startswith(prefixes):
                path.unlink(missing_ok=True)

    def write_tsv(self) -> None:
        write_tsv(self.results_tsv, self.ledger, self.program.spec.metric)

    def close(self) -> None:
        """Close the ledger and the event log (the campaign's process may go on: tests, compare)."""
        self.close_runs()
        self.ledger.close()
        if self.event_file is not None:
            self.event_file.close()

    # ---- stop conditions ---------------------------------------------------------------------

    def stop_reason(self, n_done: int, fails_in_row: int) -> str | None:
        """`n_done` counts experiments after the baseline."""
        now = time.time()
        return self.stop.reason(n_done, fails_in_row, seconds=now - self.started_at, spend_usd=self.ledger.total_cost(),
                                now=now, next_s=self.worst_next_s() if self.stop.until is not None else 0.0)  # fmt: skip

    def worst_next_s(self) -> float:
        """The most the next experiment could take: every run it may get (the first and all
        replicates, and a drift re-run) at 1.25x the longest run time seen lately, doubled when
        keeps are tested (a model's test costs less than its run, on either preset); or the
        longest experiment of this session (model calls, vet, smoke and test included; gaps
        between nights do not count), whichever is more."""
        spec = self.program.spec
        recent = self.ledger.recent_run_seconds(20)
        per_run = 1.25 * max(recent) if recent else self.program.run_timeout_s
        runs = (2 + spec.noise.max_replicates) * per_run * (2 if spec.test else 1)
        times = [self.session_started] + [r["created_at"] for r in self.ledger.experiments()
                                          if r["created_at"] > self.session_started]  # fmt: skip
        longest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)
        return max(runs, longest)
