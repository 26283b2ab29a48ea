"""The planted-bug suite (evals/bugs/): what each bug costs on the cpu preset, and which org finds it.

    python -m evals.bench_bugs                   # each bug vs the fixed train.py, 2 seeds (~11 min, 2 cores)
    python -m evals.bench_bugs --seeds 42        # one seed each
    python -m evals.bench_bugs --compare roles/tiered roles/tpe --experiments 10 --replicates 2

Costs: every variant is the real `python -m trainer.train` (as evals/bench_trainer.py runs it) on
the current train.py with one bug planted; a bug counts as measurable when its mean is worse than
the fixed file's by more than 5 sigma (sigma: the fixed file's spread over the seeds, at least the
cpu preset's measured 0.003).

--compare: for each bug, a clone of this checkout with the bug committed, and `nightlab compare`
of the given orgs on programs/quickstart.md there (equal budgets, replicate campaigns, its own
NIGHTLAB_HOME in a temp dir). Per bug and org: in how many campaigns the final best no longer
holds the planted text (fixed), and the share of the bug's cost the final best won back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from evals.bench_trainer import prepare, run
from evals.bugs import Bug, load_bugs

REPO = Path(__file__).resolve().parents[1]
SIGMA_FLOOR = 0.003  # the cpu preset's seed sigma (docs/BENCHMARKS.md)


def costs(bugs: list[Bug], seeds: list[int], timeout: int) -> dict[str, list[float]]:
    source = (REPO / "trainer" / "train.py").read_text()
    out: dict[str, list[float]] = {}
    for name, text in [("fixed", source), *[(b.name, b.plant(source)) for b in bugs]]:
        out[name] = []
        for seed in seeds:
            try:
                out[name].append(run("cpu", {"SEED": str(seed)}, timeout, source=text)["val_bpb"])
            except SystemExit as e:  # a bug that crashes the run is not silent: reported as such
                print(f"{name} seed {seed}: the run failed: {str(e)[:300]}", flush=True)
                break
        print(f"{name}: {' '.join(f'{v:.4f}' for v in out[name]) or 'crashed'}", flush=True)
    return out


def final_best_source(tag: str) -> str:
    """train.py at the final best commit of campaign `tag` (the last keep, else the baseline)."""
    from org import campaign as c
    from org.ledger import Ledger

    rows = Ledger(c.campaign_dir(tag) / "ledger.db").experiments()
    best = [r for r in rows if r["status"] == "keep"][-1]
    return subprocess.run(["git", "show", f"{best['commit']}:trainer/train.py"], cwd=c.campaign_dir(tag) / "worktree",
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


def compare_bugs(bugs: list[Bug], orgs: list[str], experiments: int, replicates: int) -> list[str]:
    """Markdown rows: bug, org, fixed in k of n campaigns, mean share of the cost won back."""
    from org import compare as cmp

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-bugs-"))
    os.environ["NIGHTLAB_HOME"] = str(tmp / "home")
    for bug in bugs:
        repo = tmp / bug.name
        subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
        train = repo / "trainer" / "train.py"
        train.write_text(bug.plant(train.read_text()))
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@nightlab"]
        subprocess.run([*git, "commit", "-qam", f"plant {bug.name}"], cwd=repo, check=True)
        name = f"bug-{bug.name}"
        cmp.run_compare(name, repo / "programs" / "quickstart.md", [str(REPO / o) for o in orgs],
                        experiments, replicates)  # fmt: skip
        for arm in cmp.arm_names(orgs):
            tags = [cmp.campaign_tag(name, arm, r) for r in range(replicates)]
            fixed = sum(not bug.present(final_best_source(t)) for t in tags)
            rows.append(f"| {bug.name} | {bug.kind} | {arm} | {fixed}/{len(tags)} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="42,43", help="comma-separated SEED values per variant")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--only", default="", help="comma-separated bug names (default: all)")
    ap.add_argument("--compare", nargs="+", metavar="ORG", help="org folders to compare on every bug")
    ap.add_argument("--experiments", type=int, default=10)
    ap.add_argument("--replicates", type=int, default=2)
    args = ap.parse_args()
    bugs = [b for b in load_bugs() if not args.only or b.name in args.only.split(",")]
    prepare("cpu")
    if args.compare:
        rows = compare_bugs(bugs, args.compare, args.experiments, args.replicates)
        print("| bug | kind | org | fixed |\n|---|---|---|---|\n" + "\n".join(rows))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()
    vals = costs(bugs, seeds, args.timeout)
    fixed = vals.pop("fixed")
    sigma = max(statistics.stdev(fixed) if len(fixed) > 1 else 0.0, SIGMA_FLOOR)
    print("---")
    print(f"date: {time.strftime('%Y-%m-%d')}")
    print(f"cpus: {os.cpu_count()}")
    print(f"seeds: {seeds}")
    print(f"fixed_val_bpb: {statistics.fmean(fixed):.4f}")
    print(f"sigma: {sigma:.4f}")
    measurable = 0
    for bug in bugs:
        v = vals[bug.name]
        if len(v) < len(seeds):
            print(f"{bug.name}: crashed (not silent)")
            continue
        delta = statistics.fmean(v) - statistics.fmean(fixed)
        measurable += delta > 5 * sigma
        print(f"{bug.name}: {bug.kind} val_bpb {statistics.fmean(v):.4f} delta {delta:+.4f} ({delta / sigma:+.1f} sigma)")
    print(f"measurable: {measurable}/{len(bugs)}")
    print(f"wall_s: {time.time() - t0:.0f}")


if __name__ == "__main__":
    main()
