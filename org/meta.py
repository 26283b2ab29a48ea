"""Meta-optimise a program's strategy: `nightlab meta`.

The program's front matter is its contract (target, metric, budget, sandbox) and is never changed;
its markdown body, the strategy every role reads, is what this searches over. Each round the
director (roles/meta/director.md) writes `variants` new bodies from the incumbent and every score
so far; each variant, and the incumbent in round 1, is scored by a short comparison on equal
budgets (org/compare.py: the same org, `experiments` per campaign, `replicates` campaigns, each
with its own memory); the variant with the best mean final-best delta survives if it beats the
incumbent's. Nothing is overwritten: every variant, its diff against the original, its score and
the director's rationale stay in `$NIGHTLAB_HOME/meta/<name>/`, and the winner is written as a new
program file beside the original (`<program>.<name>.md`).

A variant file is the original front matter, byte for byte, but for its `repo:` line, written as
the absolute path of the original's repo so it loads from the meta directory; `_write_variant`
loads it back and refuses it unless its contract (and repo) equal the original's.
"""

from __future__ import annotations

import difflib
import re
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from org.errors import InputError
from org.prompts import one_line
from org.settings import home_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
DIRECTOR = REPO_ROOT / "roles" / "meta" / "director.md"


class StrategyVariant(BaseModel):
    """The director's answer: a new strategy body."""

    model_config = ConfigDict(extra="forbid")

    rationale: str = Field(pattern=one_line(300), description="one line: what this strategy changes and why")
    strategy: str = Field(min_length=40, max_length=3000, description="the full new strategy, markdown")


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    round: int
    index: int  # 0: the incumbent as given (round 1 only)
    file: str
    rationale: str
    compare: str  # the comparison that scored it
    score: float | None = None  # mean final-best delta over its campaigns (None: not scored yet)
    sd: float | None = None
    campaigns: int = 0


class MetaRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    program: str
    org: str
    rounds: int
    variants: int
    experiments: int
    replicates: int
    created_at: float
    tried: list[Variant] = []
    incumbent: int | None = None  # index into `tried`
    winner_file: str | None = None
    asked: dict[str, int] = {}  # round -> answers asked of the director (saved before each ask)


def meta_dir(name: str) -> Path:
    return home_dir() / "meta" / name


def split_program(text: str, path: Path) -> tuple[str, str]:
    """(front matter text without its --- lines, body) of a program file."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise InputError(path, "front matter", "missing (expected a --- YAML block at the top)")
    for i, line in enumerate(lines[1:], 1):
        if line.strip() == "---":
            return "".join(lines[1:i]), "".join(lines[i + 1 :])
    raise InputError(path, "front matter", "not closed by a --- line")


def _write_variant(original: Path, body: str, out: Path) -> None:
    """The original's front matter verbatim (plus `repo:` when it has none) and `body`; loaded
    back, its contract must equal the original's or it is refused."""
    from org.program import load_program

    front, _ = split_program(original.read_text(encoding="utf-8"), original)
    prog = load_program(original)
    lines = [line for line in front.splitlines(keepends=True) if not re.match(r"repo\s*:", line)]
    front = "".join(lines) + ("" if not lines or lines[-1].endswith("\n") else "\n") + f"repo: {prog.repo}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"---\n{front}---\n{body.strip()}\n", encoding="utf-8")
    mine = load_program(out)
    same = {k: v for k, v in mine.spec.model_dump().items() if k != "repo"} == \
        {k: v for k, v in prog.spec.model_dump().items() if k != "repo"}  # fmt: skip
    if not same or mine.repo != prog.repo:
        out.unlink()
        raise InputError(out, "front matter", "the variant's contract differs from the program's; refused")


def _history(record: MetaRecord) -> str:
    rows = [f"- round {v.round} variant {v.index}: "
            + (f"{v.score:+.4f} ± {v.sd or 0:.4f} over {v.campaigns} campaigns" if v.score is not None else "not scored")
            + (" (incumbent)" if record.incumbent is not None and record.tried[record.incumbent] is v else "")
            + f"; {v.rationale}" for v in record.tried]  # fmt: skip
    return "\n".join(rows) or "(none yet)"


def _check_director(models: Any) -> None:
    """Strategies are words: an embedded base model writes none worth scoring (org/calls.py,
    `ask_words`), so a meta run whose director it would be is refused before anything runs."""
    from org.models.names import parse_model
    from org.roles import load_role

    first = models.first_choice(load_role(DIRECTOR))
    if parse_model(first).is_base:
        raise InputError(DIRECTOR, "model", f"{first} would write the strategies, and an embedded base model "
                         "writes valid JSON, not a strategy: set the primary's API key, or point the role at an "
                         "instruction-tuned model (e.g. ollama_chat/qwen2.5:7b)")  # fmt: skip


def _ask_variant(record: MetaRecord, program: Any, incumbent_body: str, models: Any) -> StrategyVariant | None:
    from org.models.names import parse_model
    from org.roles import load_role

    role = load_role(DIRECTOR)
    system = role.render(program_name=program.spec.name, metric=program.spec.metric,
                         direction="lower" if program.spec.direction == "min" else "higher",
                         strategy=incumbent_body.strip(), history=_history(record))  # fmt: skip
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Write one new strategy. Answer with one JSON object."}]  # fmt: skip
    res = models.structured(role, messages, StrategyVariant)
    return None if parse_model(res.record.model_used).is_base else res.value  # a failover mid-call: unused


def _score(v: Variant, experiments: int, replicates: int, org: str, models: Any) -> None:
    from org import compare as cmp

    cmp.run_compare(v.compare, v.file, [org], experiments, replicates, models=models)
    plan = cmp.ComparePlan.model_validate_json((cmp.compares_dir() / v.compare / cmp.PLAN).read_text())
    _, per_arm = cmp.arm_table(plan)
    deltas = [s["best_delta"] for stats in per_arm.values() for s in stats]
    v.campaigns = len(deltas)
    v.score = statistics.fmean(deltas) if deltas else None
    v.sd = statistics.stdev(deltas) if len(deltas) > 1 else 0.0


def _save(record: MetaRecord) -> None:
    path = meta_dir(record.name) / "meta.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.model_dump_json(indent=2))
    tmp.replace(path)


def run_meta(name: str, program_path: str | Path, org: str, rounds: int, variants: int, experiments: int,
             replicates: int, models: Any = None) -> MetaRecord:  # fmt: skip
    """Run (or resume) the rounds; returns the record. The winner is written beside the program."""
    from org import campaign as c
    from org.program import load_program

    c.check_tag(name, "name")
    original = Path(program_path).resolve()
    program, _ = c.validate_inputs(original, org)
    if models is None:
        from org.models import ModelClient

        models = ModelClient()
    _check_director(models)
    directory = meta_dir(name)
    path = directory / "meta.json"
    asked = dict(program=str(original), org=str(Path(org).resolve()), rounds=rounds, variants=variants,
                 experiments=experiments, replicates=replicates)  # fmt: skip
    if path.is_file():
        from org.compare import check_same

        record = MetaRecord.model_validate_json(path.read_text())
        check_same(record, asked, path, f"meta run {name!r}")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        record = MetaRecord(name=name, created_at=time.time(), **asked)
        first = directory / "round-1" / "variant-0.md"
        _write_variant(original, program.strategy, first)
        record.tried.append(Variant(round=1, index=0, file=str(first), rationale="the program as given",
                                    compare=f"{name}-r1-v0"))  # fmt: skip
        record.incumbent = 0
        _save(record)
    for v in record.tried:  # resume: score what was written and not yet scored
        if v.score is None:
            _score(v, experiments, replicates, record.org, models)
            _save(record)
    original_body = split_program(original.read_text(encoding="utf-8"), original)[1]
    for rnd in range(1, rounds + 1):
        while record.asked.get(str(rnd), 0) < variants:
            j = record.asked[str(rnd)] = record.asked.get(str(rnd), 0) + 1
            _save(record)  # counted before asking: a kill never re-asks into a numbered file
            assert record.incumbent is not None
            incumbent_body = load_program(record.tried[record.incumbent].file).strategy
            answer = _ask_variant(record, program, incumbent_body, models)
            if answer is None:  # the director gave nothing usable: fewer variants this round
                continue
            out = directory / f"round-{rnd}" / f"variant-{j}.md"
            _write_variant(original, answer.strategy, out)
            diff = difflib.unified_diff(original_body.splitlines(keepends=True),
                                        (answer.strategy.strip() + "\n").splitlines(keepends=True),
                                        "original", f"round-{rnd}/variant-{j}")  # fmt: skip
            out.with_suffix(".diff").write_text("".join(diff), encoding="utf-8")
            v = Variant(round=rnd, index=j, file=str(out), rationale=answer.rationale, compare=f"{name}-r{rnd}-v{j}")
            record.tried.append(v)
            _save(record)
            _score(v, experiments, replicates, record.org, models)
            _save(record)
        _promote(record, rnd, program.spec.direction)
        _save(record)
    record.winner_file = str(_write_winner(record, original))
    _save(record)
    return record


def _promote(record: MetaRecord, rnd: int, direction: str) -> None:
    """The round's best variant becomes the incumbent if its mean beats the incumbent's."""
    assert record.incumbent is not None
    better = (lambda a, b: a < b) if direction == "min" else (lambda a, b: a > b)
    for i, v in enumerate(record.tried):
        inc = record.tried[record.incumbent]
        if v.round == rnd and v.score is not None and (inc.score is None or better(v.score, inc.score)):
            record.incumbent = i


def _write_winner(record: MetaRecord, original: Path) -> Path:
    """The incumbent's body under the original's front matter, as a new file beside the original
    (never over it, nor over an earlier winner)."""
    assert record.incumbent is not None
    from org.program import load_program

    front, _ = split_program(original.read_text(encoding="utf-8"), original)
    body = load_program(record.tried[record.incumbent].file).strategy
    out = original.with_name(f"{original.stem}.{record.name}.md")
    text = f"---\n{front}---\n{body.strip()}\n"
    if out.exists() and out.read_text(encoding="utf-8") != text:
        raise InputError(out, None, "exists and differs from this meta run's winner; move it or use another --name")
    out.write_text(text, encoding="utf-8")
    return out
