"""The morning report: `nightlab report TAG` -> report.md, report.html and progress.png.

Read in two minutes: what stopped the campaign and where it ended first, then the plot, the
confirmed keeps with their held-out test scores, how to reproduce the best, what each role cost
per keep, what the vet gates saved, lessons, drift. Everything comes from the campaign's own
records (ledger.db, campaign.json, events.jsonl, its memory); `data(tag)` is the same content as
a dict (`--json`). The HTML is the markdown rendered (Python-Markdown) with the plot embedded, so
it opens offline from anywhere.
"""

from __future__ import annotations

import base64
import json
import statistics
from pathlib import Path
from typing import Any

from org.ledger import MEASURED, Ledger

PLOT = "progress.png"


def _stop_reason(directory: Path) -> str:
    path = directory / "events.jsonl"
    reason = "still running, or killed (no stop recorded)"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if '"event": "stop"' in line:
                reason = json.loads(line).get("reason", reason)
            elif '"event": "campaign_resume"' in line:
                reason = "still running, or killed (no stop recorded since the last resume)"
    return reason


def data(tag: str) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    from org import campaign as c
    from org.program import load_program
    from org.verdict import noise_estimate

    record = c.load_record(tag)
    directory = c.campaign_dir(tag)
    ledger = Ledger(directory / "ledger.db")
    try:
        rows = ledger.experiments()
        calls = list(ledger.db["calls"].rows)
        _, frontier = ledger.spend()  # hosted-model tokens, failed calls included
        gates = ledger.gates()
        runs = {r["n"]: [x["metric"] for x in ledger.runs(r["n"]) if x["metric"] is not None] for r in rows}
        run_seconds = [x["seconds"] for x in ledger.db["runs"].rows if x["seconds"]]
        sigma, df = noise_estimate(ledger)
        drift = ledger.drift_checks()
    finally:
        ledger.close()
    better = min if record.direction == "min" else max
    kept = [r for r in rows if r["status"] == "keep"]
    best = better(kept, key=lambda r: r["metric"]) if kept else None
    base = rows[0] if rows else None
    per_run = statistics.fmean(run_seconds) if run_seconds else 0.0
    try:
        from org.measure import run_command_of
        from org.workspace import Workspace

        program = load_program(record.program)
        spec = program.spec
        env = " ".join(f"{k}={v}" for k, v in spec.env.items())
        knobs = Workspace(directory / "worktree").show(best["commit"], program.knob_path) if best else None
        run = run_command_of(program, knobs) if knobs is not None else spec.run
        steps = [f"{env} {cmd}".strip() for cmd in (spec.setup, run) if cmd]
    except Exception:  # noqa: BLE001 - the report must still come out if the program file moved
        steps = ["(the program's setup and run commands)"]
    roles: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows[1:]:
        entry = roles.setdefault((r["role"], r["model"] or ""), {"experiments": 0, "keeps": 0, "calls": 0,
                                                                "failed": 0, "usd": 0.0, "tokens": 0})  # fmt: skip
        entry["experiments"] += 1
        entry["keeps"] += r["status"] == "keep"
    fallbacks: dict[str, int] = {}
    for k in calls:
        entry = roles.setdefault((k["role"], k["model_used"] or k["model_requested"]),
                                 {"experiments": 0, "keeps": 0, "calls": 0, "failed": 0, "usd": 0.0, "tokens": 0})  # fmt: skip
        entry["calls"] += 1
        entry["failed"] += not k["ok"]
        entry["usd"] += k["cost_usd"] or 0.0
        tokens = (k["prompt_tokens"] or 0) + (k["completion_tokens"] or 0)
        entry["tokens"] += tokens
        if k["model_used"] and k["model_used"] != k["model_requested"]:
            fallbacks[k["role"]] = fallbacks.get(k["role"], 0) + 1
    degraded = _degraded(calls)
    refused: dict[str, int] = {}
    for g in gates:
        if not g["ok"]:
            refused[g["gate"]] = refused.get(g["gate"], 0) + 1
    lessons = _lessons(record, directory)
    return {
        "tag": tag, "program": record.program, "org": record.org, "metric": record.metric,
        "direction": record.direction, "stopped": _stop_reason(directory),
        "experiments": max(0, len(rows) - 1), "keeps": max(0, len(kept) - 1), "runs": sum(map(len, runs.values())),
        "hours": (max((r["created_at"] for r in rows), default=record.created_at) - record.created_at) / 3600,
        "baseline": base["metric"] if base else None, "baseline_test": base.get("test_metric") if base else None,
        "best": best["metric"] if best else None, "best_test": best.get("test_metric") if best else None,
        "best_commit": best["commit"] if best else None, "sigma": sigma, "sigma_df": df,
        "kept": [{k: r.get(k) for k in ("n", "commit", "description", "hypothesis", "role", "model", "metric",
                                        "delta", "confidence", "runs", "sd", "test_metric", "test_delta")}
                 for r in kept if r["n"] > 0],
        "experiments_table": [{"n": r["n"], "status": r["status"], "metric": r["metric"], "sd": r["sd"],
                               "runs": r["runs"], "description": r["description"]} for r in rows],
        "roles": [{"role": role, "model": model, **v,
                   "usd_per_keep": v["usd"] / v["keeps"] if v["keeps"] else None}
                  for (role, model), v in sorted(roles.items())],
        "frontier_tokens": frontier, "fallbacks": fallbacks, "degraded": degraded,
        "refused": refused, "run_minutes_saved": sum(refused.values()) * per_run / 60,
        "lessons": lessons,
        "drift": [{"after": d["after"], "exp": d["exp"], "metric": d["metric"], "reference": d["reference"],
                   "flagged": bool(d["flagged"])} for d in drift],
        "reproduce": [f"git -C {record.repo} worktree add /tmp/{tag}-best {best['commit']}" if best else "",
                      "cd /tmp/" + tag + "-best", *steps],
    }  # fmt: skip


def _degraded(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role, how long it was degraded: from a call its primary did not answer (a fallback did,
    or no model could: an outage) to the next call the primary answered, or the role's last call."""
    out: dict[str, dict[str, Any]] = {}
    for role in sorted({k["role"] for k in calls}):
        mine = sorted((k for k in calls if k["role"] == role), key=lambda k: k["created_at"])
        since, seconds, fallback, failed = None, 0.0, 0, 0
        for k in mine:
            down = k["model_used"] != k["model_requested"]
            fallback += down and bool(k["model_used"])
            failed += not k["model_used"]
            if down and since is None:
                since = k["created_at"] - (k["seconds"] or 0.0)
            elif not down and since is not None:
                seconds, since = seconds + k["created_at"] - since, None
        if since is not None:
            seconds += mine[-1]["created_at"] - since
        if fallback or failed:
            out[role] = {"minutes": seconds / 60, "fallback_calls": fallback, "failed_calls": failed}
    return out


def _lessons(record: Any, directory: Path) -> list[str]:
    from memory import NoteStore
    from org.program import load_program
    from org.settings import home_dir

    try:
        target = load_program(record.program).spec.name
    except Exception:  # noqa: BLE001 - no program file, no namespace to read lessons from
        return []
    store = NoteStore(Path(record.memory_home) if record.memory_home else home_dir())
    try:
        return [n.text for n in store.notes(target=target, kind="lesson", current_only=True, newest_first=True, limit=6)]
    finally:
        store.close()


def _fmt(x: float | None, spec: str = ".6f") -> str:
    return "n/a" if x is None else f"{x:{spec}}"


def markdown_text(d: dict[str, Any]) -> str:
    delta = d["best"] - d["baseline"] if d["best"] is not None and d["baseline"] is not None else None
    tdelta = (d["best_test"] - d["baseline_test"]
              if d["best_test"] is not None and d["baseline_test"] is not None else None)  # fmt: skip
    better = "lower" if d["direction"] == "min" else "higher"
    out = [
        f"# {d['tag']}: {d['experiments']} experiments, {d['keeps']} confirmed keeps",
        "",
        f"**Stopped:** {d['stopped']}. **Best {d['metric']}:** {_fmt(d['best'])} vs baseline {_fmt(d['baseline'])} "
        f"(Δ {_fmt(delta, '+.6f')}; {better} is better); held-out test {_fmt(d['best_test'])} vs "
        f"{_fmt(d['baseline_test'])} (Δ {_fmt(tdelta, '+.6f')}). {d['runs']} runs in {d['hours']:.1f} h; "
        f"noise σ {_fmt(d['sigma'], '.4f')} ({d['sigma_df']} df).",
        "",
        f"![progress]({PLOT})",
        "",
        "## Kept changes",
        "",
    ]  # fmt: skip
    if d["kept"]:
        out += ["| # | change | Δ vs parent | confidence | runs | test Δ | proposed by | hypothesis |",
                "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for k in d["kept"]:
            out.append(f"| {k['n']} | {_cell(k['description'])} | {_fmt(k['delta'], '+.4f')} | "
                       f"{_fmt(k['confidence'], '.3f')} | {k['runs']} | {_fmt(k['test_delta'], '+.4f')} | "
                       f"{k['role']} ({k['model'] or 'n/a'}) | {_cell(k['hypothesis'])} |")  # fmt: skip
    else:
        out.append("None: nothing beat the baseline by more than the noise.")
    out += ["", "## Reproduce the best", "", "```bash", *[c for c in d["reproduce"] if c], "```", "",
            "## Spend and keep rate by role", "",
            "| role | model | experiments | keeps | calls | failed calls | USD | tokens | USD per keep |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in d["roles"]:
        out.append(f"| {r['role']} | {r['model'] or 'n/a'} | {r['experiments']} | {r['keeps']} | {r['calls']} | "
                   f"{r['failed']} | {r['usd']:.4f} | {r['tokens']} | {_fmt(r['usd_per_keep'], '.4f')} |")  # fmt: skip
    out += ["", f"Frontier tokens: {d['frontier_tokens']}. Degraded roles (answered by a fallback, or by no "
            "model in an outage): " + ("; ".join(f"{k} {v['minutes']:.1f} min ({v['fallback_calls']} calls on the "
                                               f"fallback, {v['failed_calls']} failed)" for k, v in d["degraded"].items())
                                     or "none") + ".", "", "## Vetting", ""]  # fmt: skip
    if d["refused"]:
        out += [f"- {gate}: {n} refused" for gate, n in sorted(d["refused"].items())]
        out.append(f"- at least {d['run_minutes_saved']:.1f} run-minutes saved (one run per refusal, at the "
                   "campaign's mean run time)")  # fmt: skip
    else:
        out.append("No proposal was refused.")
    out += ["", "## Lessons from memory", ""] + ([f"- {_cell(x)}" for x in d["lessons"]] or ["None yet."])
    out += ["", "## Drift", ""]
    flagged = [x for x in d["drift"] if x["flagged"]]
    out += [f"- after experiment {x['after']}: the best re-ran at {_fmt(x['metric'])} against "
            f"{_fmt(x['reference'])}" for x in flagged] or [f"{len(d['drift'])} checks, none flagged."]  # fmt: skip
    return "\n".join(out) + "\n"


def _cell(text: str | None) -> str:
    """Model-written text as one table cell: HTML-escaped (markdown passes raw HTML through to the
    report.html a browser opens), one line, no cell breaks, at most 200 characters."""
    text = " ".join(str(text or "").split())[:200]
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")  # no tag can open


def plot(d: dict[str, Any], out: Path) -> None:
    """Every experiment's metric by index (error bars: sd over its runs), keeps highlighted, the
    running best as a step line. Crashed and rejected experiments are ticks on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    rows = d["experiments_table"]
    ok = [r for r in rows if r["metric"] is not None and r["status"] in MEASURED]
    for status, color, label in (("discard", "#999999", "discarded"), ("beaten", "#7fb88d", "beaten in its round"),
                                 ("keep", "#1b9e3e", "kept")):  # fmt: skip
        pts = [r for r in ok if r["status"] == status or (status == "discard" and r["status"] == "pending")]
        if pts:
            ax.errorbar([r["n"] for r in pts], [r["metric"] for r in pts], yerr=[r["sd"] or 0 for r in pts],
                        fmt="o", color=color, label=label, ms=6 if status == "keep" else 4, capsize=2)  # fmt: skip
    better = min if d["direction"] == "min" else max
    best, xs, ys = None, [], []
    for r in rows:
        if r["status"] == "keep" and r["metric"] is not None:
            best = r["metric"] if best is None else better(best, r["metric"])
        if best is not None:
            xs.append(r["n"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#1b9e3e", lw=1.2, label="running best")
    bad = [r["n"] for r in rows if r["status"] in ("crash", "rejected")]
    if bad:
        ax.plot(bad, [0] * len(bad), "x", color="#d62728", transform=ax.get_xaxis_transform(), clip_on=False,
                label="crashed / rejected")  # fmt: skip
    ax.set_xlabel("experiment")
    ax.set_ylabel(d["metric"])
    ax.set_title(d["tag"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def write(tag: str) -> tuple[Path, Path]:
    """report.md, report.html and progress.png in the campaign directory; the md and html paths."""
    import markdown

    from org import campaign as c

    d = data(tag)
    directory = c.campaign_dir(tag)
    plot(d, directory / PLOT)
    text = markdown_text(d)
    md = directory / "report.md"
    md.write_text(text, encoding="utf-8")
    image = base64.b64encode((directory / PLOT).read_bytes()).decode()
    body = markdown.markdown(text.replace(f"]({PLOT})", f"](data:image/png;base64,{image})"),
                             extensions=["tables", "fenced_code"])  # fmt: skip
    page = directory / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{tag}</title><style>{_CSS}</style>"
                    f"</head><body>{body}</body></html>\n", encoding="utf-8")  # fmt: skip
    return md, page


_CSS = ("body{font:14px/1.45 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
        "font-size:13px}th{background:#f3f3f3}img{max-width:100%}code,pre{background:#f6f6f6}"
        "pre{padding:.5em;overflow-x:auto}")  # fmt: skip
