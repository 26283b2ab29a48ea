"""Vet a committed change before it may spend a run. Cheapest gate first; the first rejection wins.

This is the hook issue 6 fills in (static AST rules, smoke run, sandbox checks). A gate is a
function `(VetInput) -> str | None` returning a rejection reason, listed in `GATES` in order.
The LLM peer review and the memory duplicate check need the campaign's clients, so they are
passed in as callables and run last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from org.program import Program
from org.workspace import Workspace


@dataclass
class VetInput:
    workspace: Workspace
    program: Program
    best_commit: str  # the change is HEAD relative to this
    protected_hashes: dict[str, str]  # repo-relative path -> sha256 at campaign start
    hypothesis: str
    knob_move: str | None
    diff: str = ""


@dataclass
class Verdict:
    ok: bool
    gate: str  # gate that decided ("" when all passed)
    reason: str = ""
    passed: list[str] = field(default_factory=list)  # gates passed, in order


Gate = Callable[[VetInput], str | None]


def scope_gate(v: VetInput) -> str | None:
    """Only editable files changed; protected files byte-identical to the campaign start."""
    changed = v.workspace.changed_files(v.best_commit)
    if not changed:
        return "the change is empty (no file differs from the best commit)"
    outside = sorted(set(changed) - set(v.program.editable_paths))
    if outside:
        return f"changes files outside the editable set: {', '.join(outside)}"
    for rel, digest in v.protected_hashes.items():
        if v.workspace.blob_hash(rel) != digest:
            return f"protected file {rel} was modified"
    return None


def syntax_gate(v: VetInput) -> str | None:
    """Every changed Python file compiles."""
    for rel in v.workspace.changed_files(v.best_commit):
        if not rel.endswith(".py"):
            continue
        source = v.workspace.read(rel)
        try:
            compile(source, rel, "exec", dont_inherit=True)
        except SyntaxError as e:
            return f"{rel} line {e.lineno}: SyntaxError: {e.msg}"
        except ValueError as e:  # e.g. null bytes
            return f"{rel}: {e}"
    return None


GATES: list[tuple[str, Gate]] = [("scope", scope_gate), ("syntax", syntax_gate)]


def vet(
    v: VetInput,
    duplicate: Callable[[VetInput], str | None] | None = None,
    review: Callable[[VetInput], str | None] | None = None,
) -> Verdict:
    """Run the gates in order; `duplicate` and `review` are optional campaign-supplied gates."""
    gates = list(GATES)
    if duplicate is not None:
        gates.append(("duplicate", duplicate))
    if review is not None:
        gates.append(("review", review))
    passed: list[str] = []
    for name, gate in gates:
        if name in ("duplicate", "review") and not v.diff:
            v.diff = v.workspace.diff(v.best_commit)
        reason = gate(v)
        if reason:
            return Verdict(ok=False, gate=name, reason=reason, passed=passed)
        passed.append(name)
    return Verdict(ok=True, gate="", passed=passed)
