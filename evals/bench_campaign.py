"""The offline quickstart campaign, end to end: embedded model, `cpu` preset, this machine's cores.

What a user gets from `make campaign` on a fresh checkout, timed: the real `nightlab campaign`
command in a subprocess, on a clone of this checkout (so the campaign's worktree and branch live
in a temp dir, not in your repo), with NIGHTLAB_HOME in that temp dir. The data cache and the
assembled model are reused from NIGHTLAB_CACHE unless --fresh-cache. Where the time went comes
from the campaign's own ledger: runs, model calls per role, vet gates.

    python -m evals.bench_campaign --experiments 10
Prints `---` then `key: value` lines (target: 10 experiments in wall_s <= 900 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=10, help="experiments after the baseline")
    ap.add_argument("--program", default="programs/quickstart.md", help="program, relative to the repo")
    ap.add_argument("--org", default="roles/tiered", help="org folder, relative to the repo")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="an empty NIGHTLAB_CACHE: data preparation and model assembly are timed too")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp / "repo")], check=True)
    env = {**os.environ, "NIGHTLAB_HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # fmt: skip
    if args.fresh_cache:
        env["NIGHTLAB_CACHE"] = str(tmp / "cache")
    for key in [k for k in env if k.endswith(("_API_KEY", "_TOKEN"))]:
        del env[key]  # offline by construction: frontier roles fall back to the embedded model
    cmd = [sys.executable, "-m", "org.cli", "campaign", "--program", args.program, "--org", args.org,
           "--tag", "bench", "--max-experiments", str(args.experiments)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp / "repo", env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        sys.exit(f"campaign failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")

    db = sqlite3.connect(tmp / "home" / "campaigns" / "bench" / "ledger.db")
    rows = db.execute("select status, seconds from experiments order by n").fetchall()
    run_s = sum(s or 0.0 for _, s in rows)
    calls = db.execute("select role, count(*), sum(seconds), sum(prompt_tokens) from calls "
                       "group by role order by role").fetchall()  # fmt: skip
    # an inline smoke "gate" is the run itself (its seconds are in runs_s): listed apart
    gates = db.execute("select case when reason like 'inline:%' then gate || '_inline' else gate end, "
                       "count(*), sum(seconds) from gates group by 1 order by 1").fetchall()  # fmt: skip
    rejected = db.execute("select count(*) from failures").fetchone()[0]
    n_runs = db.execute("select count(*) from runs").fetchone()[0]  # replicates included
    runs_per = db.execute("select runs from experiments order by n").fetchall()
    inconclusive = db.execute("select count(*) from experiments where inconclusive = 1").fetchone()[0]
    print("---")
    print(f"experiments: {len(rows) - 1}")
    print(f"wall_s: {wall:.1f}")
    print(f"wall_min: {wall / 60:.2f}")
    print(f"runs_s: {run_s:.1f}")
    print(f"training_runs: {n_runs} (baseline {runs_per[0][0]}; per experiment {[r for (r,) in runs_per[1:]]})")
    print(f"run_mean_s: {run_s / max(n_runs, 1):.1f}")
    for role, n, seconds, prompt in calls:
        print(f"calls_{role}: {n} calls, {seconds:.1f} s, {prompt} prompt tokens")
    model_s = sum(seconds for _, _, seconds, _ in calls)
    vet_s = sum(seconds for gate, _, seconds in gates if gate not in ("review", "smoke_inline"))
    for gate, n, seconds in gates:
        print(f"gate_{gate}: {n} x, {seconds:.1f} s")
    print(f"other_s: {wall - run_s - model_s - vet_s:.1f}")
    print(f"statuses: {', '.join(f'{st}={sum(r[0] == st for r in rows[1:])}' for st in ('keep', 'discard', 'crash', 'rejected'))}")
    print(f"inconclusive_discards: {inconclusive}")
    print(f"proposals_refused_before_a_run: {rejected}")
    print(f"cpus: {os.cpu_count()}")
    print(f"fresh_cache: {args.fresh_cache}")


if __name__ == "__main__":
    main()
