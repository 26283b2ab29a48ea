"""Where a campaign's wall time goes: seconds per graph node, plus model calls and target runs.

`evals/bench_loop.py` reads it from the progress callback and subtracts "llm" and "run" to get
the orchestration's own cost per cycle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Overhead(dict[str, float]):
    """name -> seconds: graph nodes by name, "llm" for model calls, "run" for target runs."""

    def add(self, name: str, seconds: float) -> None:
        self[name] = self.get(name, 0.0) + seconds

    @contextmanager
    def timing(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)
