"""Planted bugs: silent defects from the literature, each one search/replace on trainer/train.py.

`evals/bugs/<name>.md` holds one bug: front matter (name, kind, source, search, replace) and a
body saying what goes wrong. Kept as patches rather than copies of train.py, so every variant is
the current train.py with exactly one defect. `kind: knob` bugs can be undone by a knob move (a
knob-mode org or a sampler can fix them); `kind: code` bugs only by an edit.

    python -m evals.bench_bugs                    # what each bug costs on the cpu preset
    python -m evals.bench_bugs --compare roles/tiered roles/tpe --experiments 10
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import frontmatter
from pydantic import BaseModel, ConfigDict

HERE = Path(__file__).resolve().parent


class Bug(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["code", "knob"]
    source: str  # where the defect is described
    search: str  # exact text of the fixed train.py, unique in it
    replace: str  # the same place with the bug
    description: str = ""

    def plant(self, source: str, path: str = "trainer/train.py") -> str:
        """`source` with this bug; ValueError unless its search text occurs exactly once."""
        if (n := source.count(self.search)) != 1:
            raise ValueError(f"evals/bugs/{self.name}.md: search: found {n} times in {path}, expected once")
        return source.replace(self.search, self.replace, 1)

    def present(self, source: str) -> bool:
        """Is the planted text still in `source` (not fixed)?"""
        return self.replace in source


def load_bugs() -> list[Bug]:
    bugs = []
    for path in sorted(HERE.glob("*.md")):
        post = frontmatter.load(path)
        bug = Bug.model_validate({**post.metadata, "description": post.content.strip()})
        if bug.name != path.stem:
            raise ValueError(f"{path}: name: {bug.name!r} must be the file's name ({path.stem!r})")
        bugs.append(bug)
    return bugs
