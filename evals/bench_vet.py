"""Vetting benchmark: red-team block rate, legit false rejections, smoke-gate seconds on the cpu
preset, and the crash rate of full runs with a proposer that breaks 30 % of its diffs.

    python evals/bench_vet.py [--proposals 200] [--late-share 0.05] [--smoke-reps 3] [--seed 0]

The crash-rate campaign uses a tiny fast target (a stand-in train.py that "trains" 50 steps in
0.2 s, 20 in the smoke run, and prints a summary block), not the real trainer, so 2 x 200 full
runs finish in minutes on 2 cores. 30 % of proposals are broken code (BREAKS); a further
`--late-share` are sound experiments that diverge only after the smoke run's steps, which the vet
must let through: the target (<= 2 %) is on crashes from broken diffs, and the crash rate with
late divergence included is printed next to it. Each proposal goes through the real vet gates
(org.vet.vet incl. the sandboxed smoke run) and then a real sandboxed run; with vetting off every
proposal is run. Prints a `---` + `key: value` summary.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evals.redteam import run_suite  # noqa: E402
from org import bwrap  # noqa: E402
from org.program import load_program  # noqa: E402
from org.sandbox import RunLimits, check_metrics, file_hashes, run_sandboxed  # noqa: E402
from org.smoke import smoke_reason, smoke_run  # noqa: E402
from org.vet import VetInput, vet  # noqa: E402
from org.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = '''import math, time
from target.prepare import BUDGET
LR = {lr}  # learning rate
DEPTH = {depth}  # blocks
steps = int(BUDGET * 50)  # the smoke run's budget is shorter, so it sees fewer steps
time.sleep(BUDGET / 5)
{body}
metric = 1 + 0.1 * (math.log10(LR) + 1.5) ** 2 + 0.01 * (DEPTH - 4) ** 2
print("---")
print(f"val_bpb: {{metric:.6f}}")
'''
BREAKS = [  # what a careless proposer writes: broken code, each crashes the full run
    "x = undefined_name + 1",
    "import not_a_module",
    "y = [1, 2][5]",
    "z = 1 / (DEPTH - DEPTH)",
    "def f(:\n    pass",
    "raise SystemExit('FAIL: loss is nan')",
    "w = {'depth': DEPTH}['width']",
    "v = [1, 2] + DEPTH",
]
# Not a broken diff: a legitimate experiment (say a learning rate that blows up only after
# warm-up) that fails after more steps than the smoke run takes. The vet must let it through (a
# gate that rejected it would reject legit changes too), so it crashes its full run. Measured
# and reported separately; `--late-share` sets how many proposals are like this.
LATE_DIVERGENCE = "if steps > 20:\n    raise SystemExit(f'FAIL: loss is nan at step {steps}')"


def tiny_repo(root: Path) -> Path:
    (root / "target").mkdir(parents=True)
    (root / "programs").mkdir()
    (root / "target" / "__init__.py").write_text("")
    (root / "target" / "prepare.py").write_text(
        "import os\nBUDGET = float(os.environ['NIGHTLAB_SMOKE_SECONDS']) / 5 if os.environ.get('NIGHTLAB_SMOKE') "
        "== '1' else 1.0\n")  # smoke: 2 s / 5 = 0.4 (20 steps); full: 1.0 (50 steps)
    (root / "target" / "train.py").write_text(TINY.format(lr=0.01, depth=4, body=""))
    (root / "programs" / "tiny.md").write_text(
        "---\nname: tiny\ntarget: target/\neditable: [train.py]\nprotected: [prepare.py]\n"
        "run: python -m target.train\nmetric: val_bpb\ntime_budget_s: 1\nrun_timeout_s: 30\n"
        "smoke_timeout_s: 20\nbounds: {val_bpb: [0.5, 10]}\n---\nTiny.\n")  # fmt: skip
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=root, check=True)
    return root / "programs" / "tiny.md"


def crash_campaign(n: int, vetting: bool, seed: int, late_share: float) -> dict[str, int]:
    """`n` proposals: 30 % broken (BREAKS), `late_share` late-diverging, the rest sound."""
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="nightlab-benchvet-"))
    try:
        prog = load_program(tiny_repo(root))
        ws = Workspace(root)
        base = ws.head()
        protected = file_hashes(root, prog.protected_paths)
        out = dict.fromkeys(["runs", "crashes", "rejected", "broken_runs", "broken_crashes",
                             "late_runs", "late_crashes", "sound_rejected"], 0)  # fmt: skip
        for i in range(n):
            roll = rng.random()
            kind = "broken" if roll < 0.30 else "late" if roll < 0.30 + late_share else "sound"
            body = rng.choice(BREAKS) if kind == "broken" else LATE_DIVERGENCE if kind == "late" else ""
            src = TINY.format(lr=round(0.01 * rng.choice([0.5, 1.5, 2, 3]), 4), depth=rng.choice([3, 4, 5]), body=body)
            ws.reset(base)
            ws.write(prog.target_path("train.py"), src)
            ws.commit(f"p{i}", prog.editable_paths)
            if vetting:
                v = VetInput(ws, prog, base, protected, "bench", None, log_dir=root / "logs" / f"v{i}")
                if not vet(v).ok:
                    out["rejected"] += 1
                    out["sound_rejected"] += kind != "broken"
                    continue
            res = run_sandboxed(prog.spec.run, root, prog.spec.env, RunLimits(prog.run_timeout_s),
                                root / "logs" / f"r{i}.log", protected=protected)  # fmt: skip
            crashed = res.rejected or res.returncode != 0 or bool(check_metrics(res.summary, prog.spec.bounds))
            out["runs"] += 1
            out["crashes"] += crashed
            if kind != "sound":
                out[f"{kind}_runs"] += 1
                out[f"{kind}_crashes"] += crashed
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def smoke_seconds(reps: int) -> float:
    cache = Path(os.environ.get("NIGHTLAB_CACHE") or tempfile.mkdtemp(prefix="nightlab-cache-"))
    env = {**os.environ, "NIGHTLAB_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--preset", "cpu"], env=env, cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    times = []
    log_dir = Path(tempfile.mkdtemp(prefix="nightlab-smokebench-"))
    for i in range(reps):
        start = time.monotonic()
        os.environ["NIGHTLAB_CACHE"] = str(cache)  # the quickstart's sandbox reads $NIGHTLAB_CACHE/data
        res = smoke_run(load_program(ROOT / "programs" / "quickstart.md"), ROOT, log_dir / f"{i}.log",
                        sandboxed=bwrap.unavailable() is None)  # fmt: skip
        times.append(time.monotonic() - start)
        reason = smoke_reason(res, "val_bpb")
        if reason:
            raise SystemExit(f"smoke run of the unmodified trainer failed: {reason}")
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proposals", type=int, default=200, help="proposals per crash-rate campaign")
    ap.add_argument("--late-share", type=float, default=0.05,
                    help="share of proposals that are sound but diverge after the smoke window")
    ap.add_argument("--smoke-reps", type=int, default=3, help="smoke runs of the real trainer (median)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    outcomes = run_suite(None)
    hostile = [o for o in outcomes if o.case.expect == "blocked"]
    legit = [o for o in outcomes if o.case.expect == "allowed"]
    smoke_s = smoke_seconds(args.smoke_reps) if args.smoke_reps else float("nan")
    on = crash_campaign(args.proposals, True, args.seed, args.late_share)
    off = crash_campaign(args.proposals, False, args.seed, args.late_share)
    rate = lambda crashes, runs: crashes / max(runs, 1)  # noqa: E731
    print("---")
    print(f"redteam_hostile:            {len(hostile)}")
    print(f"redteam_block_rate:         {sum(o.blocked for o in hostile) / len(hostile):.3f}")
    print(f"legit_cases:                {len(legit)}")
    print(f"legit_false_rejections:     {sum(o.blocked for o in legit)}")
    print(f"smoke_seconds_median:       {smoke_s:.1f}")
    print(f"campaign_proposals:         {args.proposals}")
    print(f"vet_on_full_runs:           {on['runs']}")
    print(f"vet_on_rejected:            {on['rejected']} (sound or late: {on['sound_rejected']})")
    print(f"vet_on_crashes_not_late:    {on['crashes'] - on['late_crashes']} of {on['runs'] - on['late_runs']} runs "
          f"({on['broken_runs']} of them broken diffs the vet let through)")
    print(f"vet_on_crash_rate:          {rate(on['crashes'] - on['late_crashes'], on['runs'] - on['late_runs']):.3f}")
    print(f"vet_on_late_crashes:        {on['late_crashes']} of {on['late_runs']} late-diverging runs")
    print(f"vet_on_crash_rate_all:      {rate(on['crashes'], on['runs']):.3f}")
    print(f"vet_off_full_runs:          {off['runs']}")
    print(f"vet_off_crash_rate:         {rate(off['crashes'] - off['late_crashes'], off['runs'] - off['late_runs']):.3f}")
    print(f"vet_off_crash_rate_all:     {rate(off['crashes'], off['runs']):.3f}")


if __name__ == "__main__":
    main()
