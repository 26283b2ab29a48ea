"""What a campaign recalls before it spends a run: memory's notes and the ledger's runs.

A change repeats an earlier experiment when its editable files are exactly what one already ran
(a move back to a value already measured, an edit undone), or when memory holds the same knob
move, diff or experiment (a keep from another campaign may be redone). The duplicate gate rejects
repeats, and in knob mode the proposer is not even offered them. Every run becomes one note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from memory.notes import experiment_text, normalize_knob_move
from org.ledger import Ledger
from org.program import Program
from org.state import Proposal
from org.workspace import Workspace


def absolute_move(description: str) -> str:
    """'DEPTH x2: 4 -> 8' -> 'DEPTH 4->8': memory compares absolute moves across keeps."""
    head, _, values = description.partition(": ")
    return f"{head.split()[0]} {values.replace(' -> ', '->')}" if values else head


def _sha(text: str | None) -> str:
    return "missing" if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Recall:
    tag: str
    program: Program
    workspace: Workspace
    ledger: Ledger
    memory: Any  # memory.NoteStore (its API is the memory contract)
    _file_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # commit -> files_key

    @property
    def target(self) -> str:
        """The memory namespace: notes are shared by campaigns of the same program."""
        return self.program.spec.name

    def context(self, query: str, budget_tokens: int) -> str:
        """Memory's notes, lessons and direction most relevant to `query`, within the budget."""
        return self.memory.context_for(query, self.target, budget_tokens)

    # ---- repeats -----------------------------------------------------------------------------

    def repeat(self, proposal: Proposal, diff: str, commit: str | None = None) -> str | None:
        """Rejection reason if the proposal, committed at `commit` (default: the worktree's HEAD),
        repeats an earlier experiment."""
        if same := self.same_as_run(commit or self.workspace.head()):
            return same
        if same := self.same_as_pending(proposal, diff):
            return same
        knob = absolute_move(proposal["description"]) if proposal["knob_move"] else None
        text = experiment_text(proposal["description"], proposal["hypothesis"])
        return self.duplicate(knob, None if knob else diff, text)

    def duplicate(self, knob_move: str | None, diff: str | None, text: str) -> str | None:
        """Rejection reason if memory holds this change already (a keep elsewhere may be redone)."""
        note = self.memory.check_duplicate(self.target, knob_move, diff, text)
        if note is None or not self._blocks(note):
            return None
        return f"repeats an earlier experiment: {note.to_prompt()}"

    def _blocks(self, note: Any) -> bool:
        """A noted experiment blocks a repeat, except a keep from another campaign (one campaign's
        keep may be redone in another), one inside the noise, and one beaten in its fan-out round
        (it helped, but is not in the best: on the new best it is a new experiment)."""
        if note.status in ("inconclusive", "beaten"):  # inside the noise; or helped, but not in the best
            return False
        return not (note.status == "keep" and note.campaign != self.tag)

    def same_as_pending(self, proposal: Proposal, diff: str) -> str | None:
        """Rejection reason if the change is one a fan-out round has pending (org/rounds.py): the
        same knob move, or the same diff blind to whitespace and comments. Memory notes a pending
        experiment only when its round closes, and a second draw of a change from the same parent
        would give the round's max-of-draws rule one more chance at a lucky run."""
        from memory.duplicate import diff_hash

        move = absolute_move(proposal["description"]) if proposal["knob_move"] else None
        mine = diff_hash(diff) if diff and not move else None
        for row in self.ledger.experiments():
            if row["status"] != "pending":
                continue
            if row["knob_move"]:
                same = bool(move) and normalize_knob_move(absolute_move(row["description"])) == normalize_knob_move(move)
            else:
                same = bool(mine) and diff_hash(self.workspace.diff(row["parent"], row["commit"])) == mine
            if same:
                return f"repeats experiment #{row['n']} ({row['description']}), pending in this round"
        return None

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

    def tried_moves(self, source: str, knobs: list[Any], at: str | None = None,
                    flying: Iterable[str] = ()) -> set[tuple[str, str]]:  # fmt: skip
        """(knob, move) pairs that would reach a value memory already holds from this value, or
        files this campaign already ran or has in flight (`flying` commits): the duplicate gate
        would reject them, so the proposer is not offered them. `source` is the knob file at the
        best commit `at` (default: the workspace as it stands)."""
        from org.proposal import apply_knob_move

        paths = self.program.editable_paths
        ran = ({*self.ran_configs(), *(self.files_key(c) for c in flying)}
               if self.program.knob_path in paths else set())  # fmt: skip
        read = (lambda rel: self.workspace.show(at, rel)) if at else self.workspace.read
        here = [_sha(read(rel)) for rel in paths] if ran else []
        slot = paths.index(self.program.knob_path) if ran else 0
        absolute, tried = {}, set()
        for k in knobs:
            for m in k.moves:
                new_source, description = apply_knob_move(source, k.name, m, style=self.program.spec.knob_style)
                absolute[(k.name, m)] = absolute_move(description)
                if ran and tuple(here[:slot] + [_sha(new_source)] + here[slot + 1 :]) in ran:
                    tried.add((k.name, m))
        notes = self.memory.tried_knob_moves(self.target, list(absolute.values()))
        for pair, move in absolute.items():
            note = notes.get(normalize_knob_move(move))
            if note is not None and self._blocks(note):
                tried.add(pair)
        return tried

    # ---- notes -------------------------------------------------------------------------------

    def remember(self, row: dict[str, Any], diff: str | None) -> None:
        """One experiment note per experiment (not the baseline), at most once. Its delta is against
        the parent (the best it set out to beat), and a discard inside the noise is noted as
        inconclusive: not evidence that the change hurts, so it does not block a later retry."""
        if row["n"] == 0 or row["status"] == "pending" or self.ledger.experiment(row["n"]).get("noted"):
            return  # (a pending one is noted when its fan-out round ends, org/rounds.py)
        status = {"rejected": "crash"}.get(row["status"], row["status"])  # memory knows no sandbox
        if status == "discard" and row.get("inconclusive"):
            status = "inconclusive"
        self.memory.add_experiment(
            self.tag, self.target, hypothesis=row["hypothesis"], change=row["description"],
            status=status, metric=row["metric"], metric_delta=row.get("delta"),
            knob_move=absolute_move(row["description"]) if row["knob_move"] else None,
            diff=None if row["knob_move"] else diff, commit=row["commit"],
            experiment_id=f"{self.tag}:{row['n']}",
        )  # fmt: skip
        self.ledger.mark_noted(row["n"])
