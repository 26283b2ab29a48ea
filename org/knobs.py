"""Set knobs to given values (a program's `knobs:` starting overrides), byte-exact elsewhere.

`org.proposal` moves a knob by a relative step; a program states absolute values. Positions come
from `org.proposal.parse_knobs` (ast), so only the value expression on that line is rewritten.
"""

from __future__ import annotations

import re
from pathlib import Path

from org.errors import InputError
from org.proposal import Knob, KnobValue, parse_knobs


def _literal(knob: Knob, value: KnobValue, program: Path) -> str:
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[knob.type]
    if not ok:
        raise InputError(program, f"knobs.{knob.name}",
                         f"{value!r} is not a {knob.type} (the target has {knob.name} = {knob.expr})")
    if knob.type == "float":
        return repr(float(value))
    if knob.type == "int" and value > 0 and value & (value - 1) == 0 and "**" in knob.expr:
        return f"2**{value.bit_length() - 1}"  # keep the target's power-of-two style
    return repr(value)


def set_knobs(source: str, values: dict[str, KnobValue], program: Path) -> str:
    """Return `source` with each named knob set; unknown names are the program's error."""
    knobs = {k.name: k for k in parse_knobs(source)}
    lines = re.findall(r"[^\n]*\n|[^\n]+$", source)  # split as ast counts lines
    for name, value in values.items():
        if name not in knobs:
            raise InputError(program, f"knobs.{name}",
                             f"no such knob in the target (knobs: {', '.join(knobs)})")
        knob = knobs[name]
        raw = lines[knob.lineno - 1].encode()
        new = _literal(knob, value, program).encode()
        lines[knob.lineno - 1] = (raw[: knob.col] + new + raw[knob.end_col :]).decode()
    return "".join(lines)
