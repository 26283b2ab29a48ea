"""The Lab: everything a graph node needs that is not checkpointed state.

Passed to the graph as its LangGraph runtime context. It owns the open ledger, the workspace,
the model client (injected: tests pass a scripted fake), memory, the event log and progress.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from memory.notes import normalize_knob_move
from org.ledger import Ledger, write_tsv
from org.program import Program
from org.prompts import VARIABLES, messages
from org.roles import Org
from org.workspace import Workspace


class StructuredClient(Protocol):
    """What the graph needs from `org.models.ModelClient` (any compatible object will do)."""

    def structured(self, role: Any, messages: list[dict], schema: type[BaseModel]) -> Any: ...

    def first_choice(self, role: Any) -> str: ...


def absolute_move(description: str) -> str:
    """'DEPTH x2: 4 -> 8' -> 'DEPTH 4->8': memory compares absolute moves across keeps."""
    head, _, values = description.partition(": ")
    return f"{head.split()[0]} {values.replace(' -> ', '->')}" if values else head


def _sha(text: str | None) -> str:
    return "missing" if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Limits:
    max_experiments: int | None
    max_hours: float | None
    max_usd: float | None
    max_failures_in_row: int


@dataclass
class Lab:
    tag: str
    dir: Path  # the campaign directory
    program: Program
    org: Org
    workspace: Workspace
    ledger: Ledger
    models: StructuredClient
    memory: Any  # memory.NoteStore (its API is the memory contract)
    limits: Limits
    started_at: float  # epoch seconds when the campaign was created
    base_commit: str  # the repo HEAD the campaign branched from
    protected_hashes: dict[str, str]
    log: Any  # structlog bound logger writing this campaign's events.jsonl
    progress: Callable[..., None] = lambda **_: None
    overhead: dict[str, float] = field(default_factory=dict)  # node -> seconds (bench_loop)
    event_file: Any = None  # the open events.jsonl behind `log`
    _file_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # commit -> files_key

    # ---- paths -------------------------------------------------------------------------------

    @property
    def results_tsv(self) -> Path:
        return self.dir / "results.tsv"

    @property
    def run_pid_file(self) -> Path:
        return self.dir / "run.pid"

    def run_log(self, n: int) -> Path:
        return self.dir / "runs" / f"{n:04d}.log"

    @property
    def target(self) -> str:
        """The memory namespace: notes are shared by campaigns of the same program."""
        return self.program.spec.name

    def write_tsv(self) -> None:
        write_tsv(self.results_tsv, self.ledger, self.program.spec.metric)

    def close(self) -> None:
        """Close the ledger and the event log (the campaign's process may go on: tests, compare)."""
        self.ledger.close()
        if self.event_file is not None:
            self.event_file.close()

    # ---- model calls -------------------------------------------------------------------------

    def variables(self, **overrides: Any) -> dict[str, Any]:
        """All template variables (see org.prompts.VARIABLES) with neutral defaults."""
        base: dict[str, Any] = {name: "" for name in VARIABLES}
        base.update(
            program_name=self.program.spec.name, strategy=self.program.strategy,
            metric=self.program.spec.metric, editable=self.program.editable_paths,
            direction="lower" if self.program.spec.direction == "min" else "higher",
            feedback=[], files={},
        )  # fmt: skip
        base.update(overrides)
        return base

    def call(self, kind: str, n: int, schema: type[BaseModel], **variables: Any) -> Any:
        """One structured call for role `kind`; the call record goes to the ledger either way."""
        role = self.org.roles[kind]
        system = role.render(**self.variables(**variables))
        start = time.monotonic()
        result = self.models.structured(role, messages(system, kind, n), schema)
        self.overhead["llm"] = self.overhead.get("llm", 0.0) + time.monotonic() - start
        self.ledger.record_call(n, result.record)
        rec = result.record
        self.log.info("model_call", role=kind, exp=n, model=rec.model_used, ok=rec.ok,
                      cost_usd=rec.cost_usd, seconds=round(rec.seconds, 3), error=rec.error)  # fmt: skip
        return result

    # ---- memory (the memory contract: memory.NoteStore) ----------------------------------------

    def memory_context(self, query: str, budget_tokens: int) -> str:
        return self.memory.context_for(query, self.target, budget_tokens)

    def duplicate(self, knob_move: str | None, diff: str | None, text: str) -> str | None:
        """Rejection reason if memory holds this change already (a keep elsewhere may be redone)."""
        note = self.memory.check_duplicate(self.target, knob_move, diff, text)
        if note is None or not self._blocks(note):
            return None
        return f"repeats an earlier experiment: {note.to_prompt()}"

    def _blocks(self, note: Any) -> bool:
        """A noted experiment blocks a repeat, except a keep from another campaign (one campaign's
        keep may be redone in another)."""
        return not (note.status == "keep" and note.campaign != self.tag)

    def files_key(self, commit: str) -> tuple[str, ...]:
        """sha256 of each editable file at `commit`: two commits with the same key run the same code."""
        if commit not in self._file_keys:
            texts = [self.workspace.show(commit, rel) for rel in self.program.editable_paths]
            self._file_keys[commit] = tuple(_sha(t) for t in texts)
        return self._file_keys[commit]

    def ran_configs(self) -> dict[tuple[str, ...], dict[str, Any]]:
        """files_key -> the latest ledger row that ran exactly those files (the baseline included)."""
        return {self.files_key(r["commit"]): r for r in self.ledger.experiments() if r["commit"]}

    def same_as_run(self, commit: str) -> str | None:
        """Rejection reason if `commit`'s editable files are exactly what an earlier experiment ran
        (a move back to a value already measured, an edit undone): the result is in the ledger."""
        row = self.ran_configs().get(self.files_key(commit))
        if row is None:
            return None
        return (f"the same files already ran as experiment #{row['n']} ({row['description']}: "
                f"{row['status']}, {self.program.spec.metric} {row['metric']})")  # fmt: skip

    def knobs(self, source: str) -> list[Any]:
        """The knob file's knobs within the program's search space (seed knobs never move: a seed
        change is noise, and the rules reject it anyway)."""
        from org.proposal import parse_knobs, within
        from org.rules import SEED_NAMES

        spec = self.program.spec
        fixed = lambda name: name in spec.fixed_knobs or bool(SEED_NAMES.search(name))
        return within(parse_knobs(source, self.program.knob_path), fixed, spec.knob_ranges, spec.knob_moves)

    def tried_moves(self, source: str, knobs: list[Any]) -> set[tuple[str, str]]:
        """(knob, move) pairs that would reach a value memory already holds from this value, or
        files this campaign already ran: the duplicate gate would reject them, so the proposer is
        not offered them. `source` is the knob file at the best commit (the workspace's state)."""
        from org.proposal import apply_knob_move

        paths = self.program.editable_paths
        ran = self.ran_configs() if self.program.knob_path in paths else {}
        here = [_sha(self.workspace.read(rel)) for rel in paths] if ran else []
        slot = paths.index(self.program.knob_path) if ran else 0
        absolute, tried = {}, set()
        for k in knobs:
            for m in k.moves:
                new_source, description = apply_knob_move(source, k.name, m)
                absolute[(k.name, m)] = absolute_move(description)
                if ran and tuple(here[:slot] + [_sha(new_source)] + here[slot + 1 :]) in ran:
                    tried.add((k.name, m))
        notes = self.memory.tried_knob_moves(self.target, list(absolute.values()))
        for pair, move in absolute.items():
            note = notes.get(normalize_knob_move(move))
            if note is not None and self._blocks(note):
                tried.add(pair)
        return tried

    def remember(self, row: dict[str, Any], baseline: float | None, diff: str | None) -> None:
        """One experiment note per run (not the baseline), at most once per experiment."""
        if row["n"] == 0 or self.ledger.experiment(row["n"]).get("noted"):
            return
        delta = None if row["metric"] is None or baseline is None else row["metric"] - baseline
        self.memory.add_experiment(
            self.tag, self.target, hypothesis=row["hypothesis"], change=row["description"],
            status=row["status"], metric=row["metric"], metric_delta=delta,
            knob_move=absolute_move(row["description"]) if row["knob_move"] else None,
            diff=None if row["knob_move"] else diff, commit=row["commit"],
            experiment_id=f"{self.tag}:{row['n']}",
        )  # fmt: skip
        self.ledger.mark_noted(row["n"])

    # ---- stop conditions ---------------------------------------------------------------------

    def stop_reason(self, n_done: int, fails_in_row: int) -> str | None:
        """`n_done` counts experiments after the baseline."""
        lim = self.limits
        if lim.max_experiments is not None and n_done >= lim.max_experiments:
            return f"reached max_experiments={lim.max_experiments}"
        if lim.max_hours is not None and time.time() - self.started_at >= lim.max_hours * 3600:
            return f"reached max_hours={lim.max_hours}"
        if lim.max_usd is not None and self.ledger.total_cost() >= lim.max_usd:
            return f"reached max_usd={lim.max_usd}"
        if fails_in_row >= lim.max_failures_in_row:
            return f"{fails_in_row} proposals in a row never reached a run"
        return None
