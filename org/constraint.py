"""Knob constraints: conditions across knobs that every point of the search space must meet.

A program's `knob_constraints` are Python-syntax expressions over the knob file's knob names and
numbers, e.g. `TOTAL_BATCH_TOKENS % (DEVICE_BATCH_SIZE * 256) == 0` (the device batch must
divide the tokens per step). Knob mode never offers a move that breaks one, a sampler never
proposes such a point, and the vet's knobs gate refuses a change whose knob file breaks one
before it spends a smoke run. Without them, about half of TPE's trials on the quickstart (19 of
37 in a 3-campaign comparison) and 40 % of random search's were refused by the smoke run on
exactly that condition (docs/BENCHMARKS.md).

A constraint is checked, not trusted: the training script still fails on a bad shape, so a
constraint saves runs and gives samplers a clean space; it guards nothing. Expressions are
evaluated on the syntax tree, never by `eval`: names, numbers, arithmetic (+ - * / // % **),
comparisons, `and` / `or` / `not`, and `min`, `max`, `abs`.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}  # fmt: skip
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}  # fmt: skip
_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs}
MAX_BITS = 100_000  # an integer power whose result would pass this is refused (`(A**128)**128` hangs)
MAX_DEPTH = 50  # nesting deeper than this is refused at parse (the evaluator recurses)


class ConstraintError(ValueError):
    """A constraint that is not an expression this module evaluates (the message says why)."""


@dataclass(frozen=True)
class Constraint:
    text: str
    tree: ast.Expression
    names: frozenset[str]  # the knob names it reads

    @classmethod
    def parse(cls, text: str) -> Constraint:
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as e:
            raise ConstraintError(f"{text!r} is not an expression: {e.msg}") from e
        except (RecursionError, MemoryError) as e:
            raise ConstraintError(f"{text[:60]!r}...: nested too deeply") from e
        if _depth(tree) > MAX_DEPTH:
            raise ConstraintError(f"{text[:60]!r}: nested deeper than {MAX_DEPTH} levels")
        names: set[str] = set()
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                if not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS) or node.keywords:
                    raise ConstraintError(f"{text!r}: only {', '.join(_FUNCTIONS)} may be called")
                if not node.args:
                    raise ConstraintError(f"{text!r}: {node.func.id}() needs arguments")
            elif isinstance(node, ast.Name):
                if id(node) not in called:
                    names.add(node.id)
            elif isinstance(node, ast.Constant):
                if not isinstance(node.value, (int, float)):  # bool is an int
                    raise ConstraintError(f"{text!r}: {node.value!r} is not a number")
            elif not isinstance(node, _ALLOWED):
                raise ConstraintError(f"{text!r}: {type(node).__name__} is not allowed (names, numbers, "
                                      "arithmetic, comparisons, and/or/not, min/max/abs)")  # fmt: skip
        if not names:
            raise ConstraintError(f"{text!r} reads no knob")
        return cls(text.strip(), tree, frozenset(names))

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Does the point `values` (knob name -> value; every name this reads) meet it? A point
        the expression cannot be evaluated at (a division by zero, a string knob) does not."""
        try:
            return bool(_eval(self.tree.body, values))
        except (ArithmeticError, TypeError, ValueError, MemoryError, RecursionError):
            return False


_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.BinOp,
    *_BINOPS, ast.Compare, *_COMPARE, ast.Load,
)  # fmt: skip


def _eval(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        value = values[node.id]
        if isinstance(value, str):
            raise TypeError(f"{node.id} is a string")
        return value
    if isinstance(node, ast.BoolOp):
        results = (bool(_eval(v, values)) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        return {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}[type(node.op)](operand)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, values), _eval(node.right, values)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int):
            if max(abs(left).bit_length(), 1) * abs(right) > MAX_BITS:
                raise ValueError("the power is too large to compute")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, values)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _FUNCTIONS[node.func.id](*(_eval(a, values) for a in node.args))
    raise TypeError(f"{type(node).__name__} is not evaluated")  # parse() let nothing else through


def _depth(tree: ast.AST) -> int:
    """How deep the tree nests, counted level by level (no recursion), up to MAX_DEPTH + 1."""
    depth, level = 0, [tree]
    while level and depth <= MAX_DEPTH:
        depth, level = depth + 1, [child for node in level for child in ast.iter_child_nodes(node)]
    return depth


def parse_all(texts: list[str]) -> list[Constraint]:
    return [Constraint.parse(t) for t in texts]


def binding(constraints: list[Constraint], best: Mapping[str, Any]) -> list[Constraint]:
    """The constraints a change from the point `best` must keep: those `best` meets. One the best
    breaks (its program changed since it was kept) binds nothing: every gate, knob mode and the
    samplers would otherwise refuse every change from it."""
    return [c for c in constraints if not broken([c], best)]


def broken(constraints: list[Constraint], values: Mapping[str, Any]) -> list[Constraint]:
    """The constraints the point `values` breaks. One that reads a name `values` lacks is not
    checked (an edit-mode change may have turned a knob into code; the run still fails on it)."""
    return [c for c in constraints if c.names <= values.keys() and not c.holds(values)]


def explain(c: Constraint, values: Mapping[str, Any]) -> str:
    """`'A % B == 0' fails at A=1024, B=16`: what a rejection or an error says."""
    at = ", ".join(f"{n}={values[n]!r}" for n in sorted(c.names) if n in values)
    return f"knob_constraints {c.text!r} fails at {at}"


def check_start(program: Any) -> None:
    """A program's constraints read only knobs of its knob file, and the file as committed (with
    the program's starting `knobs`) meets every one: the baseline is a point of the space.
    InputError naming the program and `knob_constraints` otherwise."""
    from org.errors import InputError

    if not program.spec.knob_constraints:
        return
    knobs = program.point((program.repo / program.knob_path).read_text(encoding="utf-8"))
    for c in program.constraints:
        if unknown := sorted(c.names - knobs.keys()):
            raise InputError(program.path, "knob_constraints", f"{c.text!r} reads {', '.join(unknown)}, not a knob "
                             f"of {program.knob_path} (knobs: {', '.join(knobs)})")  # fmt: skip
    start = knobs | program.spec.knobs
    if bad := broken(program.constraints, start):
        raise InputError(program.path, "knob_constraints", f"the starting knobs break it: {explain(bad[0], start)}")
