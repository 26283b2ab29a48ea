"""The campaign ledger: experiments, model calls and model-caused failures in SQLite.

SQLite is the source of truth; `results.tsv` is regenerated from it (see `write_tsv`) so the two
can never disagree. Schema changes are numbered forward-only migrations recorded in `_migrations`
(applied by memory/database.py, the one SQLite helper, as memory.db's are).
Writes are upserts keyed by experiment number, so a node re-run after `kill -9` cannot count an
experiment twice.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from memory.database import Migration, Schema, open_database

# rejected: the sandbox found a violation; pending: passed the keep rule, its fan-out round not
# over; beaten: passed it, but another of its round did more (org/rounds.py)
STATUSES = ("keep", "discard", "crash", "rejected", "pending", "beaten")
MEASURED = ("keep", "discard", "pending", "beaten")  # statuses whose metric is a sound measurement
TSV_COLUMNS = ("commit", "METRIC", "memory_gb", "status", "description",
               "hypothesis", "role", "model", "cost_usd", "seconds",
               "runs", "sd", "delta", "confidence", "test_METRIC", "test_delta")  # fmt: skip


def _m001_initial(db: sqlite_utils.Database) -> None:
    db["experiments"].create(
        {
            "n": int, "commit": str, "parent": str, "metric": float, "memory_gb": float,
            "status": str, "description": str, "hypothesis": str, "role": str, "model": str,
            "cost_usd": float, "seconds": float, "knob_move": str, "log": str, "created_at": float,
            "noted": int,  # 1 once the memory note for this experiment exists
        },
        pk="n",
    )  # fmt: skip
    db["calls"].create(
        {
            "id": int, "exp": int, "role": str, "model_requested": str, "model_used": str,
            "ok": int, "attempts": int, "prompt_tokens": int, "completion_tokens": int,
            "cost_usd": float, "seconds": float, "error": str, "created_at": float,
        },
        pk="id",
    )  # fmt: skip
    db["failures"].create(
        {
            "key": str, "exp": int, "stage": str, "reason": str, "hypothesis": str,
            "role": str, "model": str, "created_at": float,
        },
        pk="key",
    )  # fmt: skip
    db["calls"].create_index(["exp"])


def _m002_vet_gates(db: sqlite_utils.Database) -> None:
    db["gates"].create(
        {"key": str, "exp": int, "attempt": int, "gate": str, "ok": int, "reason": str,
         "seconds": float, "created_at": float},
        pk="key",
    )  # fmt: skip


def _m003_run_network(db: sqlite_utils.Database) -> None:
    # how the run was isolated: "isolated (netns)" or "not isolated: <why>"; '' for older rows
    db["experiments"].add_column("network", str, not_null_default="")


def _m004_replicates(db: sqlite_utils.Database) -> None:
    # every run of every experiment (replicates share the commit, not the seed); the experiment
    # row's metric is then the mean of its runs
    db["runs"].create(
        {"key": str, "exp": int, "replicate": int, "commit": str, "seed": int, "metric": float,
         "seconds": float, "returncode": int, "timed_out": int, "log": str, "created_at": float},
        pk="key",
    )  # fmt: skip
    db["runs"].create_index(["exp"])
    for column, kind, default in [("runs", int, 1), ("sd", float, None), ("delta", float, None),
                                  ("confidence", float, None), ("inconclusive", int, 0)]:  # fmt: skip
        db["experiments"].add_column(column, kind, not_null_default=default)


def _m005_heldout_drift(db: sqlite_utils.Database) -> None:
    # the held-out test score of a keep (the mean over its runs' saved models) and its change vs
    # the parent's; each run's summary block (steps, tokens, seconds: the drift check's inputs);
    # runs superseded by a re-measurement after drift are `stale` and no longer judge anything
    db["experiments"].add_column("test_metric", float)
    db["experiments"].add_column("test_delta", float)
    db["runs"].add_column("summary", str, not_null_default="{}")
    db["runs"].add_column("kind", str, not_null_default="run")  # run | rebaseline
    db["runs"].add_column("stale", int, not_null_default=0)
    db["drift"].create(
        {"id": int, "exp": int, "after": int, "metric": float, "reference": float, "sigma": float,
         "flagged": int, "created_at": float},
        pk="id",
    )  # fmt: skip


def _m006_run_compute(db: sqlite_utils.Database) -> None:
    # each run's CPU seconds (user + system, its whole process tree: the untimed-compute bound's
    # input) and how it was isolated ("bubblewrap: ..." or process-level only)
    db["runs"].add_column("cpu_seconds", float)
    db["runs"].add_column("isolation", str, not_null_default="")


MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_initial", _m001_initial),
    ("002_vet_gates", _m002_vet_gates),
    ("003_run_network", _m003_run_network),
    ("004_replicates", _m004_replicates),
    ("005_heldout_drift", _m005_heldout_drift),
    ("006_run_compute", _m006_run_compute),
]
SCHEMA = Schema("campaign ledger", "_migrations", MIGRATIONS, "applied_at", time.time)


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.db = open_database(path, SCHEMA)
        self.db.execute("PRAGMA synchronous=FULL")  # a keep must survive a power cut

    # ---- experiments -------------------------------------------------------------------------

    def record_experiment(self, row: dict[str, Any]) -> None:
        assert row["status"] in STATUSES, row["status"]
        row = {**row, "created_at": row.get("created_at") or time.time()}
        old = self.experiment(row["n"])
        if old is not None and old["commit"] == row["commit"]:  # a re-run after kill: same row
            row["noted"], row["created_at"] = old["noted"], old["created_at"]
        with self.db.conn:
            self.db["experiments"].upsert(row, pk="n")

    def experiments(self) -> list[dict[str, Any]]:
        return list(self.db["experiments"].rows_where(order_by="n"))

    def set_status(self, n: int, status: str) -> None:
        """A fan-out round's verdict on one of its pending experiments (org/rounds.py)."""
        assert status in STATUSES, status
        with self.db.conn:
            self.db["experiments"].update(n, {"status": status})

    def mark_noted(self, n: int) -> None:
        with self.db.conn:
            self.db["experiments"].update(n, {"noted": 1})

    def experiment(self, n: int) -> dict[str, Any] | None:
        rows = list(self.db["experiments"].rows_where("n = ?", [n]))
        return rows[0] if rows else None

    # ---- runs (an experiment's first run and its replicates) --------------------------------

    def record_run(self, exp: int, replicate: int, row: dict[str, Any]) -> None:
        """Upsert by (experiment, replicate): a run re-done after a kill replaces its record."""
        row = {**row, "key": f"{exp}:{replicate}", "exp": exp, "replicate": replicate, "created_at": time.time()}
        with self.db.conn:
            self.db["runs"].upsert(row, pk="key")

    def runs(self, exp: int, current: bool = True) -> list[dict[str, Any]]:
        """Experiment `exp`'s runs; `current`: without those a drift re-measurement superseded."""
        where = "exp = ? and stale = 0" if current else "exp = ?"
        return list(self.db["runs"].rows_where(where, [exp], order_by="replicate"))

    def next_replicate(self, exp: int) -> int:
        row = self.db.execute("select coalesce(max(replicate), -1) from runs where exp = ?", [exp]).fetchone()
        return int(row[0]) + 1

    def mark_stale(self, exp: int, before: int) -> None:
        """Runs of `exp` with replicate index below `before` no longer judge anything (drift)."""
        with self.db.conn:
            self.db.execute("update runs set stale = 1 where exp = ? and replicate < ?", [exp, before])

    def record_drift(self, exp: int, after: int, metric: float | None, reference: float, sigma: float | None,
                     flagged: bool) -> None:  # fmt: skip
        """One drift check of the best (experiment `exp`) after experiment `after`: its re-run's
        metric (None: the re-run crashed) against the mean it was recorded with."""
        with self.db.conn:
            self.db.execute("delete from drift where exp = ? and after = ?", [exp, after])
            self.db["drift"].insert(dict(exp=exp, after=after, metric=metric, reference=reference,
                                         sigma=sigma, flagged=int(flagged), created_at=time.time()))  # fmt: skip

    def drift_check(self, exp: int, after: int) -> dict[str, Any] | None:
        rows = list(self.db["drift"].rows_where("exp = ? and after = ?", [exp, after]))
        return rows[0] if rows else None

    def drift_checks(self) -> list[dict[str, Any]]:
        return list(self.db["drift"].rows_where(order_by="after"))

    def recent_run_seconds(self, k: int) -> list[float]:
        """Wall seconds of the last `k` runs that have them."""
        rows = self.db.execute("select seconds from runs where seconds is not null order by created_at desc limit ?",
                               [k]).fetchall()  # fmt: skip
        return [float(r[0]) for r in rows]

    def run_count(self) -> int:
        return int(self.db.execute("select count(*) from runs").fetchone()[0])

    def kept_experiment(self, commit: str) -> int | None:
        """The experiment that made `commit` the best (the baseline's commit gives 0)."""
        row = self.db.execute("select n from experiments where \"commit\" = ? and status = 'keep' order by n desc",
                              [commit]).fetchone()  # fmt: skip
        return None if row is None else int(row[0])

    def test_delta(self, parent_commit: str, test_metric: float | None) -> float | None:
        """A keep's test score minus its parent's (the best it beat, at `parent_commit`), when both
        were scored."""
        parent = self.kept_experiment(parent_commit) if test_metric is not None else None
        row = self.experiment(parent) if parent is not None else None
        return None if row is None or row.get("test_metric") is None else test_metric - row["test_metric"]

    def run_groups(self, exclude: tuple[int, ...] = ()) -> list[list[float]]:
        """Metrics of every experiment with finite results, one list per experiment, for the pooled
        noise estimate (crashed and rejected experiments excluded)."""
        rows = self.db.execute(
            "select r.exp, r.metric from runs r join experiments e on e.n = r.exp "
            f"where r.metric is not null and r.stale = 0 and e.status in {MEASURED!r} "
            "order by r.exp, r.replicate"
        ).fetchall()
        groups: dict[int, list[float]] = {}
        for exp, metric in rows:
            if exp not in exclude:
                groups.setdefault(exp, []).append(metric)
        return list(groups.values())

    # ---- model calls and failures ------------------------------------------------------------

    def record_call(self, exp: int, record: Any) -> None:
        data = record.model_dump() if hasattr(record, "model_dump") else dict(record)
        data = {k: data.get(k) for k in self.db["calls"].columns_dict if k not in ("id",)}
        data.update(exp=exp, ok=int(bool(data["ok"])), created_at=time.time())
        with self.db.conn:
            self.db["calls"].insert(data)

    def spend(self, role: str | None = None) -> tuple[float, int]:
        """USD and hosted-model tokens of every call so far (of `role`'s, when given), failed
        calls included."""
        from org.models.names import parse_model

        where, args = ("where role = ?", [role]) if role else ("", [])
        usd, tokens = 0.0, 0
        for cost, used, prompt, completion in self.db.execute(
                f"select cost_usd, model_used, prompt_tokens, completion_tokens from calls {where}", args):  # fmt: skip
            usd += cost or 0.0
            if used and not parse_model(used).is_local:
                tokens += (prompt or 0) + (completion or 0)
        return usd, tokens

    def cycle_cost(self, exp: int) -> float:
        row = self.db.execute("select coalesce(sum(cost_usd), 0) from calls where exp = ?", [exp])
        return float(row.fetchone()[0])

    def total_cost(self) -> float:
        return float(self.db.execute("select coalesce(sum(cost_usd), 0) from calls").fetchone()[0])

    def record_failure(self, key: str, exp: int, stage: str, reason: str,
                       hypothesis: str = "", role: str = "", model: str = "") -> None:  # fmt: skip
        row = {"key": key, "exp": exp, "stage": stage, "reason": reason, "hypothesis": hypothesis,
               "role": role, "model": model, "created_at": time.time()}  # fmt: skip
        with self.db.conn:
            self.db["failures"].upsert(row, pk="key")

    def record_gate(self, exp: int, attempt: int, gate: str, ok: bool, reason: str, seconds: float) -> None:
        row = dict(key=f"{attempt}:{gate}", exp=exp, attempt=attempt, gate=gate, ok=int(ok),
                   reason=reason, seconds=seconds, created_at=time.time())  # fmt: skip
        with self.db.conn:
            self.db["gates"].upsert(row, pk="key")

    def gates(self) -> list[dict[str, Any]]:
        return list(self.db["gates"].rows_where(order_by="attempt, created_at"))

    def failures(self, limit: int = 1000) -> list[dict[str, Any]]:
        return list(self.db["failures"].rows_where(order_by="created_at desc", limit=limit))

    def close(self) -> None:
        self.db.close()


def _fmt(value: Any, spec: str) -> str:
    return format(value or 0.0, spec)


def _opt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def tsv_text(rows: list[dict[str, Any]], metric_name: str) -> str:
    header = "\t".join(c.replace("METRIC", metric_name) for c in TSV_COLUMNS)
    lines = [header]
    for r in rows:
        crash = r["status"] in ("crash", "rejected")
        clean = {k: str(r.get(k) or "").replace("\t", " ").replace("\n", " ") for k in r}
        lines.append("\t".join([
            r["commit"][:7],
            "0.000000" if crash else _fmt(r["metric"], ".6f"),
            "0.0" if crash else _fmt(r["memory_gb"], ".1f"),
            r["status"], clean["description"], clean["hypothesis"], clean["role"],
            clean["model"], _fmt(r["cost_usd"], ".4f"), _fmt(r["seconds"], ".1f"),
            str(r.get("runs") or 1), _opt(r.get("sd"), ".6f"), _opt(r.get("delta"), "+.6f"),
            _opt(r.get("confidence"), ".3f"), _opt(r.get("test_metric"), ".6f"), _opt(r.get("test_delta"), "+.6f"),
        ]))  # fmt: skip
    return "\n".join(lines) + "\n"


def write_tsv(path: Path, ledger: Ledger, metric_name: str) -> None:
    """Regenerate results.tsv from SQLite, atomically (write a temp file, then rename)."""
    tmp = path.with_suffix(".tsv.tmp")
    tmp.write_text(tsv_text(ledger.experiments(), metric_name), encoding="utf-8")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
