"""Where a proposal comes from: a role's model (a knob move or edits) or a sampler's trial.

The propose node asks for the experiment in flight; the pipeline (org/ahead.py) asks for the
ones after it while a run trains. Both go through `candidates`, so a proposal made ahead is made
the same way, from the same prompt, at the same best commit, told what is still in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from org.errors import InputError
from org.models.names import parse_model
from org.prompts import fmt_metric, history_table, keep_rate, knob_guide, knob_listing, knob_values
from org.state import Proposal
from org.untrusted import quote_file
from org.workspace import Workspace

if TYPE_CHECKING:
    from org.lab import Lab


@dataclass(frozen=True)
class Asking:
    """What a proposal is asked for: experiment `n` (its `attempt`-th proposal), from `best_commit`."""

    n: int
    attempt: int
    best_commit: str
    best_metric: float | None
    baseline_metric: float | None
    directive: str
    feedback: tuple[str, ...]
    pending: frozenset[int] = frozenset()  # experiments asked of a sampler and not yet judged
    flying: frozenset[str] = frozenset()  # commits in flight (not judged): their moves are not offered


class Candidates(NamedTuple):
    """The round's proposals (the first is tried first), why any answer was unusable, and whether
    knob mode had nothing left to offer (no model was asked: every move from the best has run, is
    known to memory, or is in flight)."""

    proposals: list[Proposal]
    failures: list[str]
    exhausted: bool = False


def candidates(lab: Lab, asking: Asking) -> Candidates:
    kind = lab.org.proposer_for(asking.n)
    if lab.org.is_sampler(kind):
        return Candidates([_sample(lab, kind, asking)], [])
    from org.proposal import EditProposal, knob_schema, offered_moves

    role = lab.org.roles[kind]
    mode = role.spec.mode or "knob"
    ws, prog = lab.workspace, lab.program
    source = ws.show(asking.best_commit, prog.knob_path) or ""
    knobs = prog.search_space(source)
    # knob mode offers only moves memory has not seen from the current values: with a base model
    # the grammar, not the prompt, is what keeps it from proposing a known result again
    tried = lab.recall.tried_moves(source, knobs, at=asking.best_commit, flying=asking.flying) if mode == "knob" else set()
    moves = [(k.name, m) for k in knobs for m in k.moves]
    # no move alone keeps the knob constraints (a move elsewhere may): as spent as all moves tried
    boxed = mode == "knob" and not moves and any(k.allowed for k in prog.search_space(source, constrained=False))
    if mode == "knob" and (boxed or (moves and all(pair in tried for pair in moves))):
        if "sampler" in lab.org.roles:  # a centaur's sampler takes the turn its language model cannot use
            return Candidates([_sample(lab, "sampler", asking)], [])
        why = ("nothing left to offer: no single knob move from the best meets the knob constraints" if boxed else
               f"nothing left to offer: all {len(moves)} knob moves from the best have run, are known to memory "
               "or are in flight (no model asked)")  # fmt: skip
        return Candidates([], [why], exhausted=True)
    offered = offered_moves(knobs, tried)
    if parse_model(role.spec.model).is_picker:
        return Candidates([_pick(lab, kind, asking, offered)], [])
    rows = lab.ledger.experiments()
    variables: dict[str, Any] = dict(  # noqa: C408  (keyword style matches the templates)
        experiment=asking.n, mode=mode, best_metric=fmt_metric(asking.best_metric),
        baseline_metric=fmt_metric(asking.baseline_metric), keep_rate=keep_rate(rows),
        history=history_table(rows, 15), directive=asking.directive,
        feedback=list(asking.feedback), knobs=knob_listing(knobs, offered),
        knob_guide=knob_guide(knobs), knob_values=knob_values(knobs, offered),
        moves=", ".join(dict.fromkeys(m for moves in offered.values() for m in moves)),
        memory=lab.recall.context(asking.directive or prog.strategy[:300], 500),
    )  # fmt: skip
    if mode == "edit":
        variables["files"] = {p: quote_file(ws.show(asking.best_commit, prog.target_path(p)) or "")
                              for p in prog.spec.editable}  # fmt: skip
        schema: Any = EditProposal
    else:
        if not knobs:
            raise InputError(prog.knob_path, "knobs", "no UPPER_CASE knob constants found")
        schema = knob_schema(knobs, tried=tried)
    proposals: list[Proposal] = []
    failures: list[str] = []
    for _ in range(lab.org.spec.proposals_per_round):  # candidates; vet picks the first good one
        res = lab.calls.ask(kind, asking.n, schema, **variables)
        rec = res.record
        if res.value is None:
            failures.append(f"no valid answer from {rec.model_used}: {rec.error}")
            continue
        v = res.value
        # a base model's words are grammar-shaped noise ("choose-1", "keep"): the record says what
        # it did instead (its edits are code, and the vet gates judge them like any other)
        base = parse_model(rec.model_used).is_base
        if mode == "edit":
            files = ", ".join(dict.fromkeys(e.path for e in v.edits if e.path in prog.spec.editable)) or "no editable file"
            hypothesis = f"{rec.model_used} (a base model) wrote {len(v.edits)} edit(s) to {files}" if base else v.hypothesis
            proposals.append(Proposal(
                hypothesis=hypothesis, description=f"{hypothesis} [{files}]" if base else v.description(), role=kind,
                model=rec.model_used, knob_move=None, edits=[e.model_dump() for e in v.edits]))  # fmt: skip
        else:
            move = f"{v.knob} {v.move}"
            hypothesis = (f"{rec.model_used} (a base model) picked {move} from {sum(map(len, offered.values()))} "
                          "offered moves" if base else v.hypothesis)  # fmt: skip
            proposals.append(Proposal(hypothesis=hypothesis, description=move, role=kind,
                                      model=rec.model_used, knob_move=move, edits=None))  # fmt: skip
    return Candidates(proposals, failures)


def _pick(lab: Lab, kind: str, asking: Asking, offered: dict[str, tuple[str, ...]]) -> Proposal:
    """A move picker's proposal: one of the offered moves, uniformly, from a seed of the campaign's
    tag, the experiment and the attempt (a replicate campaign picks differently; a resume repeats)."""
    import random
    import zlib

    model = lab.org.roles[kind].spec.model
    menu = sorted((name, move) for name, moves in offered.items() for move in moves)
    if not menu:
        raise InputError(lab.program.knob_path, "knobs", "no movable knob for the move picker")
    name, move = random.Random(zlib.crc32(f"{lab.tag}/{asking.n}/{asking.attempt}".encode())).choice(menu)
    lab.log.info("pick", exp=asking.n, move=f"{name} {move}", menu=len(menu))
    hypothesis = f"{model} picked {name} {move} from {len(menu)} offered moves (no language model)"
    return Proposal(hypothesis=hypothesis, description=f"{name} {move}", role=kind, model=model,
                    knob_move=f"{name} {move}", edits=None)  # fmt: skip


def _sample(lab: Lab, kind: str, asking: Asking) -> Proposal:
    """A sampler's proposal: the study is told every result the ledger has first."""
    sampler = lab.sampler(kind)
    knob_path = lab.program.knob_path
    sampler.sync(lab.ledger.experiments(), lambda commit: lab.workspace.show(commit, knob_path),
                 pending=asking.pending | {asking.n})  # fmt: skip
    s = sampler.suggest(asking.n, asking.attempt, lab.workspace.show(asking.best_commit, knob_path) or "")
    lab.log.info("trial", exp=asking.n, trial=s.trial)
    return Proposal(hypothesis=s.hypothesis, description=s.description, role=kind, model=sampler.model,
                    knob_move=None, edits=None, knob_values=s.values)  # fmt: skip


def commit_proposal(lab: Lab, ws: Workspace, p: Proposal, n: int, best_commit: str) -> Proposal:
    """Apply `p` on `best_commit` in `ws` as one commit; the proposal as applied (a knob move's
    description names the values it moved between). Raises InputError, ValueError or KeyError
    when it does not apply: the model's fault, or a rebase onto a best it no longer fits."""
    from org.knobs import set_knobs
    from org.proposal import SearchReplace, apply_edits, apply_knob_move

    prog = lab.program
    ws.reset(best_commit)  # idempotent: a re-run after kill starts from the same point
    if p.get("knob_values"):  # a sampler's trial (its description is already the change)
        ws.write(prog.knob_path, set_knobs(ws.read(prog.knob_path), p["knob_values"], prog.path, prog.spec.knob_style))
    elif p["knob_move"]:
        knob, move = p["knob_move"].split(" ", 1)
        new_source, description = apply_knob_move(ws.read(prog.knob_path), knob, move, prog.knob_path,
                                                    prog.spec.knob_style)  # fmt: skip
        ws.write(prog.knob_path, new_source)
        p = {**p, "description": description}
    else:
        files = {rel: ws.read(prog.target_path(rel)) for rel in prog.spec.editable}
        edits = [SearchReplace.model_validate(e) for e in p["edits"] or []]
        for rel, text in apply_edits(files, edits).items():  # paths relative to the target
            ws.write(prog.target_path(rel), text)
    ws.commit(f"exp {n}: {p['description']}\n\n{p['hypothesis']}", prog.editable_paths)
    return p
