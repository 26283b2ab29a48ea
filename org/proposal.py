"""What a proposer may answer: a knob move (closed choices, for weak models) or search/replace edits.

Knobs are found with `ast` at the top level of the knob file, in one of the program's styles:
    constants     upper-case constants with a trailing comment (`DEPTH = 4  # transformer
                  blocks`): the default, autoresearch's train.py
    assignments   every plain `name = literal` line, any case, comment or not: a config file such
                  as nanoGPT's `config/train_shakespeare_char.py`
    overrides     the same file format, whose values the harness also appends to the run
                  command as `--name=value` (org/measure.py): a trainer configured on its
                  command line
Applying a move rewrites only that value; every other byte of the file stays as it was.
Errors here are usually the model's (a move that does nothing, a search text that is not in
the file): they are `InputError`s naming the file and field, for the caller to record and show.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from org.errors import InputError
from org.prompts import one_line

if TYPE_CHECKING:
    from org.constraint import Constraint

KnobValue = int | float | bool | str
NUMBER_MOVES = ("x2", "x0.5", "x1.5", "x0.67")
MOVES_BY_TYPE: dict[str, tuple[str, ...]] = {
    "int": (*NUMBER_MOVES, "+1", "-1"),
    "float": NUMBER_MOVES,
    "bool": ("toggle",),
    "str": (),  # string knobs are not movable in knob mode (edit mode can change them)
}
ZERO_FLOAT_MOVES = ("+0.1", "+0.01")  # scaling 0.0 does nothing; these switch a term on
ALL_MOVES = tuple(dict.fromkeys(m for ms in (*MOVES_BY_TYPE.values(), ZERO_FLOAT_MOVES) for m in ms))
_FACTORS = {"x2": 2.0, "x0.5": 0.5, "x1.5": 1.5, "x0.67": 0.67}
_STEPS = {"+1": 1, "-1": -1, "+0.1": 0.1, "+0.01": 0.01}
_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_ANY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KnobStyle = Literal["constants", "assignments", "overrides"]
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}


def type_moves(kind: str) -> tuple[str, ...]:
    """Every move a knob of this type can take from some value."""
    return MOVES_BY_TYPE[kind] + (ZERO_FLOAT_MOVES if kind == "float" else ())


@dataclass(frozen=True)
class Knob:
    name: str
    value: KnobValue
    type: Literal["int", "float", "bool", "str"]
    comment: str  # the trailing comment, without '#'
    lineno: int  # 1-based
    col: int  # byte offsets of the value expression on its line
    end_col: int
    expr: str  # the value as written (`2**19`, `3e-4`)
    allowed: tuple[str, ...] | None = None  # set by `within`: the program's search space

    @property
    def moves(self) -> tuple[str, ...]:
        """The moves that change this knob's value (a schema offers only these)."""
        if self.allowed is not None:
            return self.allowed
        if self.type == "float" and self.value == 0:
            return ZERO_FLOAT_MOVES
        return tuple(m for m in MOVES_BY_TYPE[self.type] if _moved(self, m) != self.value)


def within(knobs: list[Knob], fixed: Callable[[str], bool], ranges: dict[str, tuple[float, float]],
           only: dict[str, list[str]] | None = None, constraints: Sequence[Constraint] = ()) -> list[Knob]:  # fmt: skip
    """The knobs restricted to a program's search space: a `fixed` knob has no moves, a knob in
    `only` takes only the moves listed there, a move whose new value leaves the knob's [lo, hi]
    range is not offered (a momentum of 1.9 is a crash, not an experiment), nor one whose point
    breaks a constraint the current point meets (a device batch that no longer divides the step)."""
    from org.constraint import binding, broken

    point = {k.name: k.value for k in knobs}
    holding = binding(list(constraints), point)
    out = []
    for k in knobs:
        moves = () if fixed(k.name) else k.moves
        if only and k.name in only:
            moves = tuple(m for m in moves if m in only[k.name])
        if k.name in ranges and k.type in ("int", "float"):
            lo, hi = ranges[k.name]
            moves = tuple(m for m in moves if lo <= _moved(k, m) <= hi)
        if holding:
            moves = tuple(m for m in moves if not broken(holding, point | {k.name: _moved(k, m)}))
        out.append(replace(k, allowed=moves))
    return out


def _const(node: ast.AST) -> Any:
    """Evaluate a literal or constant arithmetic (`2**19`, `-3e-4`, `64 * 8`); ValueError otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _const(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _const(node.left), _const(node.right)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
        if numbers and not (isinstance(node.op, ast.Pow) and abs(right) > 128):
            return _BINOPS[type(node.op)](left, right)
    raise ValueError("not a constant")


def _lines(source: str) -> list[str]:
    """Lines with their endings, split only on '\\n' as ast counts them."""
    return re.findall(r"[^\n]*\n|[^\n]+$", source)


def parse_knobs(source: str, path: str = "train.py", style: KnobStyle = "constants") -> list[Knob]:
    constants = style == "constants"
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise InputError(path, "source", f"syntax error on line {e.lineno}: {e.msg}") from e
    lines = _lines(source)
    knobs: list[Knob] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and (_NAME if constants else _ANY_NAME).match(target.id)):
            continue
        if value.lineno != value.end_lineno or value.end_col_offset is None:
            continue
        raw = lines[value.lineno - 1].rstrip("\r\n").encode()
        tail = raw[value.end_col_offset :].decode().strip()
        if constants and not tail.startswith("#"):
            continue  # knobs are the commented constants; others are plain module constants
        if tail and not tail.startswith("#"):
            continue  # `a = 1; b = 2`: more than one statement on the line
        try:
            v = _const(value)
        except (ValueError, ArithmeticError):
            continue
        kind = "bool" if isinstance(v, bool) else type(v).__name__
        expr = raw[value.col_offset : value.end_col_offset].decode()
        knobs.append(Knob(target.id, v, kind, tail[1:].strip(), value.lineno,
                          value.col_offset, value.end_col_offset, expr))
    if not constants:  # a name assigned twice: the last assignment is the value the file ends with
        last = {k.name: k for k in knobs}
        knobs = [k for k in knobs if last[k.name] is k]
    return knobs


def override_args(source: str, path: str, allowed: set[str] | None = None) -> list[str]:
    """The knob file's values as command-line overrides (`--name=value`, in file order), only for
    names in `allowed` (None: all): an assignment an edit added becomes no flag."""
    return [f"--{k.name}={k.value}" for k in parse_knobs(source, path, "overrides")
            if allowed is None or k.name in allowed]  # fmt: skip


def knob_literal(knob: Knob, value: KnobValue, digits: int | None = None) -> str:
    """`value` written in the knob's own style: `2**k` stays a power of two when it can, a float
    knob gets a float literal (rounded to `digits` significant digits when given)."""
    if knob.type == "bool":
        return repr(bool(value))
    if knob.type == "int":
        m = re.fullmatch(r"\s*2\s*\*\*\s*(\d+)\s*", knob.expr)
        if m and value > 0 and value & (value - 1) == 0:
            return f"2**{int(value).bit_length() - 1}"
        return str(int(value))
    if knob.type == "float":
        x = float(value)
        return repr(float(f"{x:.{digits}g}") if digits else x)
    return repr(value)


def with_literal(source: str, knob: Knob, text: str) -> str:
    """`source` with the knob's value expression replaced by `text`; every other byte unchanged."""
    lines = _lines(source)
    raw = lines[knob.lineno - 1].encode()
    lines[knob.lineno - 1] = (raw[: knob.col] + text.encode() + raw[knob.end_col :]).decode()
    return "".join(lines)


def move_value(knob: Knob, move: str) -> KnobValue:
    if move not in knob.moves:
        allowed = ", ".join(knob.moves) or "none"
        raise InputError(None, "move", f"move {move!r} does not apply to {knob.type} knob "
                                       f"{knob.name} = {knob.expr} (allowed: {allowed})")
    return _moved(knob, move)


def _moved(knob: Knob, move: str) -> KnobValue:
    if move == "toggle":
        return not knob.value
    if move in _STEPS:
        new = knob.value + _STEPS[move]
        return float(f"{new:.6g}") if knob.type == "float" else new
    scaled = float(knob.value) * _FACTORS[move]
    if knob.type == "float":
        return float(f"{scaled:.4g}")
    new = round(scaled)
    if new == 0 and knob.value != 0:  # multiplicative moves keep the sign and never reach 0
        new = 1 if knob.value > 0 else -1
    return new


def apply_knob_move(source: str, knob_name: str, move: str, path: str = "train.py",
                    style: KnobStyle = "constants") -> tuple[str, str]:  # fmt: skip
    """Rewrite one knob; returns (new_source, one-line description like 'DEPTH x2: 4 -> 8')."""
    knobs = {k.name: k for k in parse_knobs(source, path, style)}
    if knob_name not in knobs:
        raise InputError(path, "knob", f"no knob named {knob_name!r} (knobs: {', '.join(knobs)})")
    knob = knobs[knob_name]
    try:
        new = move_value(knob, move)
    except InputError as e:
        raise InputError(path, "move", e.message) from e
    if new == knob.value:
        raise InputError(path, "move", f"{knob_name} {move} leaves the value at {knob.expr}")
    text = knob_literal(knob, new, digits=4)
    return with_literal(source, knob, text), f"{knob_name} {move}: {knob.expr} -> {text}"


class KnobProposalBase(BaseModel):
    """Fields are added by `knob_schema`; the validator checks the move suits the knob's type."""

    model_config = ConfigDict(extra="forbid")
    knob_moves: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_validator(mode="after")
    def _move_fits_knob(self) -> KnobProposalBase:
        allowed = self.knob_moves.get(self.knob, ())  # type: ignore[attr-defined]
        if self.move not in allowed:  # type: ignore[attr-defined]
            raise ValueError(f"move {self.move!r} does not apply to knob {self.knob!r}; "  # type: ignore[attr-defined]
                             f"choose one of {list(allowed)}")
        return self


def offered_moves(knobs: list[Knob], tried: set[tuple[str, str]] = frozenset()) -> dict[str, tuple[str, ...]]:
    """knob -> the moves to offer: those that change it, minus `tried` (knob, move) pairs. When
    every move has been tried, all are offered again (the duplicate gate then says why not)."""
    offered = {k.name: tuple(m for m in k.moves if (k.name, m) not in tried) for k in knobs}
    offered = {name: moves for name, moves in offered.items() if moves}
    return offered or {k.name: k.moves for k in knobs if k.moves}


def knob_schema(knobs: list[Knob], max_hypothesis: int = 160,
                tried: set[tuple[str, str]] = frozenset()) -> type[BaseModel]:  # fmt: skip
    """An enum-constrained model `{hypothesis, knob, move}`; its JSON schema is a union of one
    branch per set of allowed moves, so a grammar only ever allows a move that changes
    the chosen knob and has not been `tried` from its current value."""
    offered = offered_moves(knobs, tried)
    if not offered:
        raise InputError(None, "knobs", "no movable knobs (int/float/bool constants with a comment)")
    names = tuple(offered)
    all_moves = tuple(dict.fromkeys(m for moves in offered.values() for m in moves))
    groups: dict[tuple[str, ...], list[str]] = {}  # knobs grouped by the moves they allow
    for name, moves in offered.items():
        groups.setdefault(moves, []).append(name)
    pattern = one_line(max_hypothesis)
    hypothesis = {"type": "string", "pattern": pattern,
                  "description": "why this change should lower the metric, one sentence"}

    def union_schema(schema: dict[str, Any]) -> None:
        branches = [
            {"type": "object", "additionalProperties": False,
             "required": ["hypothesis", "knob", "move"],
             "properties": {"hypothesis": hypothesis, "knob": {"enum": group},
                            "move": {"enum": list(moves)}}}
            for moves, group in groups.items()
        ]
        for key in ("properties", "required", "type", "additionalProperties"):
            schema.pop(key, None)
        schema["anyOf"] = branches

    model = create_model(
        "KnobProposal",
        __base__=KnobProposalBase,
        hypothesis=(str, Field(pattern=pattern)),
        knob=(Literal[names], ...),  # type: ignore[valid-type]
        move=(Literal[all_moves], ...),  # type: ignore[valid-type]
    )
    model.model_config["json_schema_extra"] = union_schema
    model.model_rebuild(force=True)
    model.knob_moves = offered
    return model


class SearchReplace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="file to edit, relative to the target directory")
    search: str = Field(description="exact text currently in the file, unique in it")
    replace: str = Field(description="text to put in its place")


class EditProposal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hypothesis: str
    edits: list[SearchReplace] = Field(min_length=1)

    def description(self, width: int = 100) -> str:
        """One line for results.tsv: the hypothesis, squashed, plus which files changed."""
        text = " ".join(self.hypothesis.split())
        text = text if len(text) <= width else text[: width - 3] + "..."
        files = ", ".join(dict.fromkeys(e.path for e in self.edits))
        return f"{text} [{files}]"


def apply_edits(files: dict[str, str], edits: list[SearchReplace]) -> dict[str, str]:
    """Apply search/replace blocks in order; returns all files (changed ones replaced).

    A search text must occur exactly once in the file as it is at that point."""
    out = dict(files)
    for i, edit in enumerate(edits):
        where = f"edits[{i}]"
        if edit.path not in out:
            raise InputError(edit.path, f"{where}.path",
                             f"not an editable file (editable: {', '.join(sorted(files))})")
        if not edit.search:
            raise InputError(edit.path, f"{where}.search", "empty search text")
        count = out[edit.path].count(edit.search)
        first = edit.search.strip().splitlines()[0][:60] if edit.search.strip() else repr(edit.search)
        if count == 0:
            raise InputError(edit.path, f"{where}.search", f"search text not found: {first!r}")
        if count > 1:
            raise InputError(edit.path, f"{where}.search", f"search text is ambiguous ({count} "
                             f"matches): {first!r}; include more surrounding lines")
        out[edit.path] = out[edit.path].replace(edit.search, edit.replace, 1)
    return out
