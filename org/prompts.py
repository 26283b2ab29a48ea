"""What the graph tells each role: template variables, the user turn, and the output schemas.

Role files (`roles/<org>/<role>.md`) are the single source of each system prompt; this module only
provides the variables they may use (`VARIABLES`), the helpers that format their values (metrics,
history, knobs), and the pydantic models their answers must fit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memory.notes import Effect, LessonDraft
from org.errors import InputError

# Every name a role template may use. Checked against each role's template before a campaign
# touches anything, so a typo in a role file fails at start, not at 3 am.
VARIABLES: dict[str, str] = {
    "program_name": "name of the program (target contract)",
    "strategy": "the program body: the human's research strategy",
    "metric": "metric name, e.g. val_bpb",
    "direction": "'lower' or 'higher' (which is better)",
    "experiment": "number of the experiment being proposed (baseline is 0)",
    "best_metric": "best metric so far, formatted",
    "baseline_metric": "baseline metric, formatted",
    "keep_rate": "share of experiments kept so far, formatted",
    "history": "recent experiments as a small table (status, mean metric, runs, confidence, description)",
    "noise": "the measured run-to-run noise and what a keep must show, one line",
    "directive": "the director's current guidance ('' if none yet)",
    "feedback": "list of recent model-caused errors (bad JSON, rejected or crashed changes)",
    "memory": "notes from memory relevant to this target (may be '')",
    "mode": "'knob' or 'edit'",
    "knobs": "the knob constants of the target file, one per line with comments",
    "knob_guide": "each knob with its comment, one per line: stable, for a prompt's cached head",
    "knob_values": "each movable knob's current value and the moves offered from it",
    "moves": "allowed knob moves, comma separated",
    "editable": "list of editable file paths",
    "files": "dict path -> current content of editable files (edit mode)",
    "hypothesis": "the proposal's hypothesis (reviewer)",
    "description": "one-line description of the proposed change (reviewer)",
    "diff": "unified diff of the proposed change (reviewer)",
    "notes": "notes to compact, one per line (compactor)",
}

USER_TURN = {
    "proposer": "Propose experiment {n}. Answer with one JSON object matching the schema.",
    "director": "Review the campaign so far and set the direction. Answer with one JSON object.",
    "reviewer": "Review this proposed change. Answer with one JSON object.",
    "compactor": "Distil these notes into lessons. Answer with one JSON object.",
}


def one_line(max_chars: int, min_chars: int = 1) -> str:
    """A JSON-schema pattern for one line of text: no control characters, quotes or backslashes.
    For a grammar-bound small model it keeps strings short in tokens (no six-character `\\uXXXX`
    escapes, no raw newlines llama.cpp's string rule would let through), so the answer closes
    inside `max_tokens` instead of being cut off mid-string."""
    return '^[^"\\\\\\x00-\\x1f]{%d,%d}$' % (min_chars, max_chars)


class Directive(BaseModel):
    """Director output: an assessment and the guidance proposers get until the next review."""

    model_config = ConfigDict(extra="forbid")

    assessment: str = Field(pattern=one_line(400), description="one or two sentences on what the results show")
    focus: str = Field(pattern=one_line(400), description="what proposers should try next, concretely")
    avoid: str = Field(default="", pattern=one_line(300, 0), description="directions that have been exhausted")

    def guidance(self) -> str:
        """What proposers are told (the `directive` variable) until the director speaks again."""
        return f"{self.focus}" + (f" Avoid: {self.avoid}" if self.avoid else "")


class Review(BaseModel):
    """Peer reviewer output."""

    model_config = ConfigDict(extra="forbid")

    approve: bool
    reason: str = Field(pattern=one_line(160), description="one sentence: why approve or reject")


CONFIDENCE = {"low": 0.25, "medium": 0.5, "high": 0.75}


class LessonOut(BaseModel):
    """One lesson as a model writes it: memory.LessonDraft's fields a model can judge, bounded."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(pattern=one_line(240), description="the lesson in one or two sentences")
    note_ids: list[int] = Field(min_length=1, max_length=12, description="ids of the notes it merges")
    knob_move: str | None = Field(default=None, pattern=one_line(60), description="the knob move, if any")
    effect: Effect = "unclear"
    # words, not a float: llama.cpp's JSON-schema grammar does not bound numbers, and a base model
    # wrote confidence 5 (a closed choice is what a grammar can enforce)
    confidence: Literal["low", "medium", "high"] = "medium"

    def draft(self) -> LessonDraft:
        return LessonDraft(**{**self.model_dump(), "confidence": CONFIDENCE[self.confidence]})


class Lessons(BaseModel):
    """Compactor output: lessons citing the note ids they merge."""

    model_config = ConfigDict(extra="forbid")

    lessons: list[LessonOut] = Field(max_length=4)


def check_role_variables(roles: dict[str, Any]) -> None:
    """Every variable a role template uses must be one the graph provides."""
    for role in roles.values():
        unknown = sorted(set(role.variables) - VARIABLES.keys())
        if unknown:
            raise InputError(role.path, "body", f"missing template variable {unknown[0]!r} "
                             f"(available: {', '.join(sorted(VARIABLES))})")  # fmt: skip


def fmt_metric(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6f}"


def history_table(rows: list[dict[str, Any]], limit: int) -> str:
    """The last `limit` experiments as a compact fixed-width table: the mean over an experiment's
    runs, how many runs, and the confidence that it beat its parent ('-' where not tested)."""
    if not rows:
        return "(no experiments yet)"
    lines = ["  #  status   metric     runs  conf  description"]
    for r in rows[-limit:]:
        metric = "-" if r["status"] in ("crash", "rejected") else fmt_metric(r["metric"])
        status = "noise" if r.get("inconclusive") else r["status"]  # a discard inside the noise
        conf = "-" if r.get("confidence") is None else f"{r['confidence']:.2f}"
        lines.append(f"{r['n']:>3}  {status:<7}  {metric:<9}  {r.get('runs') or 1:>4}  {conf:>4}  "
                     f"{r['description'][:90]}")  # fmt: skip
    return "\n".join(lines)


def noise_line(sigma: float | None, df: int, confidence: float, replicated: bool) -> str:
    """One line for the prompts: how big the noise is and what a keep must show."""
    if not replicated:
        return "each change runs once; the target is taken to be deterministic"
    if sigma is None:
        return "run-to-run noise not measured yet; a keep needs replicate runs"
    return (f"run-to-run noise sigma = {sigma:.4f} ({df} degrees of freedom); a change is kept only if "
            f"replicate runs show it better with confidence >= {confidence:.2f}, so aim for effects "
            f"well above {2 * sigma:.4f}")


def messages(system: str, kind: str, n: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": system},
            {"role": "user", "content": USER_TURN[kind].format(n=n)}]  # fmt: skip


def keep_rate(rows: list[dict[str, Any]]) -> str:
    """`kept/run` over the experiments after the baseline."""
    rows = [r for r in rows if r["n"] > 0]
    kept = sum(r["status"] == "keep" for r in rows)
    return f"{kept}/{len(rows)}" if rows else "0/0"


# ---- knobs, as the roles see them ---------------------------------------------------------------


def _moves(k: Any, offered: dict[str, tuple[str, ...]] | None) -> str:
    if not k.moves:
        return "fixed"
    if offered is not None and k.name not in offered:
        return "all tried from this value"
    return ", ".join(offered[k.name] if offered is not None else k.moves)


def knob_listing(knobs: list[Any], offered: dict[str, tuple[str, ...]] | None = None) -> str:
    """One knob per line: `NAME = value  # comment  [moves: ...]`. `offered` (knob -> moves) marks
    knobs whose every move was tried from here; string knobs are not movable."""
    return "\n".join(f"{k.name} = {k.expr}  # {k.comment}  [moves: {_moves(k, offered)}]" for k in knobs)


# A local model re-reads only the part of a prompt after the first change since its last call
# (llama.cpp reuses the KV cache of a shared prefix): the proposer's template puts what stays the
# same (the knobs and their meaning, the append-only history) before what moves every experiment
# (current values and offered moves, memory), so a proposal costs ~1k prompt tokens, not ~2k.
def knob_guide(knobs: list[Any]) -> str:
    """One knob per line: `NAME: comment`, `(fixed)` when it never moves. Stable within a campaign."""
    return "\n".join(f"{k.name}: {k.comment}" + ("" if k.moves else "  (fixed)") for k in knobs)


def knob_values(knobs: list[Any], offered: dict[str, tuple[str, ...]]) -> str:
    """One movable knob per line: `NAME = value  [moves: ...]`, the moves offered from here."""
    return "\n".join(f"{k.name} = {k.expr}  [moves: {_moves(k, offered)}]" for k in knobs if k.moves)
