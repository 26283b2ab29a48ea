"""Set knobs to given values (a program's `knobs:` starting overrides), byte-exact elsewhere.

`org.proposal` moves a knob by a relative step; a program states absolute values. Positions come
from `org.proposal.parse_knobs` (ast), and the value is written by `org.proposal.knob_literal`,
so only the value expression on that line is rewritten, in the knob's own style.
"""

from __future__ import annotations

from pathlib import Path

from org.errors import InputError
from org.proposal import Knob, KnobStyle, KnobValue, knob_literal, parse_knobs, with_literal


def _check_type(knob: Knob, value: KnobValue, program: Path, field: str) -> None:
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[knob.type]
    if not ok:
        raise InputError(program, f"{field}.{knob.name}",
                         f"{value!r} is not a {knob.type} (the target has {knob.name} = {knob.expr})")


def set_knobs(source: str, values: dict[str, KnobValue], program: Path, style: KnobStyle = "constants",
              field: str = "knobs") -> str:  # fmt: skip
    """Return `source` with each named knob set; unknown names are the program's error (its
    `field`: `knobs`, or `smoke_knobs`)."""
    knobs = {k.name: k for k in parse_knobs(source, style=style)}
    for name, value in values.items():
        if name not in knobs:
            raise InputError(program, f"{field}.{name}",
                             f"no such knob in the target (knobs: {', '.join(knobs)})")
        _check_type(knobs[name], value, program, field)
        source = with_literal(source, knobs[name], knob_literal(knobs[name], value))
    return source
