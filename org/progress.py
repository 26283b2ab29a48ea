"""Live terminal progress for a campaign: phase, experiment #, best metric, keep rate, spend.

Nodes call `lab.progress(phase=..., **info)`. On a terminal this redraws one rich panel; when
output is not a terminal (CI, nohup) it prints one plain line per recorded experiment instead.
"""

from __future__ import annotations

import time
from typing import Any, Self

from rich.console import Console
from rich.live import Live
from rich.table import Table


class Dashboard:
    def __init__(self, tag: str, metric: str, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.tag, self.metric = tag, metric
        self.info: dict[str, Any] = {"phase": "start", "n": 0, "best": None, "keep_rate": "0/0",
                                     "spend": 0.0, "status": ""}  # fmt: skip
        self.since = time.monotonic()
        self.live: Live | None = None

    def __enter__(self) -> Self:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, **info: Any) -> None:
        if info.get("phase") != self.info.get("phase"):
            self.since = time.monotonic()
        self.info.update(info)
        if self.live is not None:
            self.live.update(self._render())
        elif info.get("phase") == "record":
            i = self.info
            best = "n/a" if i["best"] is None else f"{i['best']:.6f}"
            self.console.print(f"[{self.tag}] exp {i['n']}: {i['status']:<7} best {self.metric} "
                               f"{best}  kept {i['keep_rate']}  spend ${i['spend']:.4f}",
                               highlight=False)  # fmt: skip

    def _render(self) -> Table:
        i = self.info
        table = Table(title=f"nightlab campaign {self.tag}", show_header=False, expand=False)
        table.add_column(style="bold")
        table.add_column()
        best = "n/a" if i["best"] is None else f"{i['best']:.6f}"
        table.add_row("phase", f"{i['phase']} ({time.monotonic() - self.since:.0f}s)")
        table.add_row("experiment", str(i["n"]))
        table.add_row(f"best {self.metric}", best)
        table.add_row("kept", str(i["keep_rate"]))
        table.add_row("last", str(i.get("status") or "-"))
        table.add_row("spend", f"${i['spend']:.4f}")
        return table
