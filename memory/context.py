"""Retrieval into prompts: a memory block packed into a token budget that is never exceeded.

Order of priority: the latest current direction, then current lessons (most confident first, at
most LESSON_SHARE of the budget while related notes are waiting), then the k notes most related
to the query, then any lessons that did not fit earlier. Every candidate is added only if the
whole block, re-counted with tiktoken, still fits; a direction that is too long is cut to fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory.notes import Note
from memory.tokens import count_tokens, truncate_to_tokens

if TYPE_CHECKING:
    from memory.notebook import Notebook

HEADER = "## Memory (notes from earlier experiments on this target)"
LESSON_SHARE = 0.6
MAX_LESSONS = 40


class _Block:
    def __init__(self, budget: int):
        self.budget = budget
        self.sections: dict[str, list[str]] = {}

    def render(self, sections: dict[str, list[str]] | None = None) -> str:
        sections = self.sections if sections is None else sections
        parts = [
            f"### {title}\n" + "\n".join(f"- {ln}" for ln in lines)
            for title, lines in sections.items()
            if lines
        ]
        return f"{HEADER}\n\n" + "\n\n".join(parts) if parts else ""

    def tokens(self) -> int:
        return count_tokens(self.render())

    def try_add(self, section: str, line: str, limit: int | None = None) -> bool:
        trial = {k: list(v) for k, v in self.sections.items()}
        trial.setdefault(section, []).append(line)
        if count_tokens(self.render(trial)) <= min(self.budget, limit or self.budget):
            self.sections = trial
            return True
        return False

    def add_cut(self, section: str, line: str) -> bool:
        """Add `line`, cut to whatever budget is left (at least a few tokens of it)."""
        if self.try_add(section, line):
            return True
        room = self.budget - count_tokens(
            self.render({**self.sections, section: [*self.sections.get(section, []), ""]})
        )
        while room >= 8:
            if self.try_add(section, truncate_to_tokens(line, room - 1) + "…"):
                return True
            room -= 4
        return False


def context_for(store: Notebook, query: str, target: str, budget_tokens: int, k: int = 8) -> str:
    block = _Block(budget_tokens)
    if budget_tokens <= 0:
        return ""
    directions = store.notes(
        target=target, kind="direction", current_only=True, limit=1, newest_first=True
    )
    for d in directions:
        block.add_cut("Current direction", d.to_prompt())
    lessons = sorted(
        store.notes(target=target, kind="lesson", current_only=True),
        key=lambda n: (-(n.confidence or 0.0), -n.id),
    )[:MAX_LESSONS]
    shown = {d.id for d in directions}
    leftover: list[Note] = []
    lesson_cap = int(budget_tokens * LESSON_SHARE)
    for n in lessons:
        if block.try_add("Lessons", n.to_prompt(), limit=lesson_cap):
            shown.add(n.id)
        else:
            leftover.append(n)
    related = (
        [
            n
            for n in store.search(query, k + len(shown), target, current_only=True)
            if n.id not in shown
        ][:k]
        if query.strip()
        else []
    )
    for n in related:
        block.try_add("Related notes", n.to_prompt())
    for n in leftover:
        block.try_add("Lessons", n.to_prompt())
    text = block.render()
    assert count_tokens(text) <= budget_tokens, "memory block over budget"  # try_add guarantees it
    return text
