"""`nightlab export mlflow TAG`: every experiment of a campaign as an MLflow run.

Knob values at the experiment's commit are params; its mean metric, spread, Δ vs parent,
confidence, held-out test score, runs, seconds, memory and model spend are metrics; status,
role, model, commit, description and hypothesis are tags. The store defaults to a SQLite file in
the campaign directory (`mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db`); any MLflow
tracking URI works. Exporting again adds only the experiments not yet exported. MLflow is an
optional extra: `pip install 'nightlab[mlflow]'`.
"""

from __future__ import annotations

import time
from typing import Any

from org.errors import InputError
from org.ledger import MEASURED

METRICS = ("metric", "sd", "delta", "confidence", "test_metric", "test_delta", "runs", "seconds", "memory_gb",
           "cost_usd")  # fmt: skip


def export_mlflow(tag: str, tracking_uri: str | None = None) -> tuple[str, int]:
    """Export campaign `tag`; returns the tracking URI and how many runs were added."""
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param, RunTag
    except ImportError:
        raise InputError(None, "mlflow", "MLflow is not installed: pip install 'nightlab[mlflow]'") from None
    from org import campaign as c
    from org.ledger import Ledger
    from org.program import load_program
    from org.workspace import Workspace

    record = c.load_record(tag)
    directory = c.campaign_dir(tag)
    uri = tracking_uri or f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    name = f"nightlab/{tag}"
    found = client.get_experiment_by_name(name)
    exp_id = found.experiment_id if found else client.create_experiment(name, tags={"nightlab.program": record.program,
                                                                                     "nightlab.org": record.org})  # fmt: skip
    done = {r.data.tags.get("nightlab.exp") for r in client.search_runs([exp_id], max_results=50000)}
    ledger = Ledger(directory / "ledger.db")
    try:
        rows = ledger.experiments()
    finally:
        ledger.close()
    program = load_program(record.program)
    ws = Workspace(directory / "worktree")
    added = 0
    for row in rows:
        if str(row["n"]) in done:
            continue
        source = ws.show(row["commit"], program.knob_path)
        knobs = program.knobs_of(source) if source is not None else []
        now = int(time.time() * 1000)
        metrics = [Metric(record.metric if k == "metric" else k, float(row[k]), now, 0) for k in METRICS
                   if row.get(k) is not None]  # fmt: skip
        tags = {"nightlab.tag": tag, "nightlab.exp": str(row["n"]), "status": row["status"], "role": row["role"] or "",
                "model": row["model"] or "", "commit": row["commit"], "description": row["description"][:5000],
                "hypothesis": (row["hypothesis"] or "")[:5000], "mlflow.note.content": row["hypothesis"] or ""}  # fmt: skip
        run = client.create_run(exp_id, run_name=f"{row['n']:04d} {row['description'][:60]}", tags=tags,
                                start_time=int(row["created_at"] * 1000))  # fmt: skip
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k.name, str(k.value)[:6000]) for k in knobs],
                         tags=[RunTag("nightlab.inconclusive", str(bool(row.get("inconclusive"))))])  # fmt: skip
        client.set_terminated(run.info.run_id, "FINISHED" if row["status"] in MEASURED else "FAILED",
                              end_time=int(row["created_at"] * 1000))  # fmt: skip
        added += 1
    return uri, added


def exported_runs(tag: str, tracking_uri: str) -> list[Any]:
    """The runs a campaign's export holds, read back through MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(f"nightlab/{tag}")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=50000)
