"""What one quickstart run costs through the real measurement (org/measure.py): training in its
bubblewrap sandbox, then the saved model scored by the sandboxed scorer while it runs in a
model server of its own. The unmodified trainer/train.py, on a scratch copy of trainer/.

    python -m evals.bench_measure              # 2 runs (~2.5 min on 2 cores)
    python -m evals.bench_measure --runs 3 --unsandboxed
    python -m evals.bench_measure --slots 2    # the runs two at a time, each on its share of the
                                               # cores (org/slots.py): runs per hour against one slot

Per run: the whole measurement's wall seconds, the training process's own (`total_seconds`, and
its loop: `training_seconds`), the rest (the evaluation, and the training interpreter's start-up
and torch import before its clock starts, ~4 s), and the CPU seconds of every process
together (what the program's `cpu_slack` caps). The first sandbox of a process also walks the
system for the directories to hide (`sandbox.hides`, once per process): timed apart.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from org import bwrap
from org.measure import Caps, measure, view
from org.program import load_program

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="runs to time (default 2)")
    ap.add_argument("--program", default="programs/quickstart.md", help="program, relative to the repo")
    ap.add_argument("--unsandboxed", action="store_true", help="process isolation only, for comparison")
    ap.add_argument("--slots", type=int, default=1, help="runs at once, each pinned to its share of the cores")
    args = ap.parse_args()
    if args.slots > 1:
        return slots(args)
    program = load_program(ROOT / args.program)
    sandboxed = not args.unsandboxed
    scratch = Path(tempfile.mkdtemp(prefix="nightlab-bench-measure-"))
    try:
        t = time.monotonic()
        if sandboxed:
            bwrap.argv(view(program, "run", scratch))  # the one-off walk for sandbox.hides
        walk = time.monotonic() - t
        rows = []
        for i in range(args.runs):
            work = scratch / f"run{i}"
            shutil.copytree(ROOT / "trainer", work / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
            t = time.monotonic()
            res = measure(program, work, {}, scratch / f"run{i}.log", work / "out", sandboxed=sandboxed,
                          timeout_s=program.run_timeout_s, caps=Caps())  # fmt: skip
            wall = time.monotonic() - t
            if res.returncode != 0 or res.violations:
                raise SystemExit(f"run {i} failed: {res.violations or res.tail[-800:]}")
            train = float(res.summary["total_seconds"])
            rows.append(dict(wall=wall, train=train, loop=float(res.summary["training_seconds"]),
                             rest=res.seconds - train, cpu=res.cpu_seconds or 0.0,
                             metric=float(res.summary[program.spec.metric])))  # fmt: skip
            print(f"run {i}: wall {wall:.1f} s, training process {train:.1f} s (loop {rows[-1]['loop']:.1f}), "
                  f"rest (evaluation, interpreter start) {rows[-1]['rest']:.1f} s, cpu {rows[-1]['cpu']:.1f} s, "
                  f"{program.spec.metric} {rows[-1]['metric']:.6f}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("---")
    print(f"sandboxed: {sandboxed}")
    print(f"runs: {len(rows)}")
    for key in ("wall", "train", "loop", "rest", "cpu"):
        print(f"{key}_s_median: {statistics.median(r[key] for r in rows):.1f}")
    print(f"hides_walk_s: {walk:.1f}")
    print(f"{program.spec.metric}: {rows[0]['metric']:.6f}")


def slots(args: argparse.Namespace) -> None:
    """`--runs` runs, `--slots` at a time (each thread pinned to its cores, as org/slots.py pins a
    slot), then the same runs one at a time on every core: wall time and runs per hour of each."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from org.slots import pinned

    program = load_program(ROOT / args.program)
    scratch = Path(tempfile.mkdtemp(prefix="nightlab-bench-slots-"))
    cores = sorted(os.sched_getaffinity(0))
    per = len(cores) // args.slots

    def one(i: int, cpus: tuple[int, ...]) -> float:
        work = scratch / f"run{i}"
        shutil.copytree(ROOT / "trainer", work / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        res = pinned(cpus, lambda: measure(program, work, {}, scratch / f"run{i}.log", work / "out",
                                           not args.unsandboxed, program.run_timeout_s, caps=Caps()))  # fmt: skip
        if res.returncode != 0 or res.violations:
            raise SystemExit(f"run {i} failed: {res.violations or res.tail[-800:]}")
        return float(res.summary[program.spec.metric])

    try:
        bwrap.argv(view(program, "run", scratch))  # the one-off walk for sandbox.hides, not timed
        t = time.monotonic()
        serial = [one(i, ()) for i in range(args.runs)]
        serial_s = time.monotonic() - t
        t = time.monotonic()
        with ThreadPoolExecutor(args.slots) as pool:
            jobs = [pool.submit(one, args.runs + i, tuple(cores[(i % args.slots) * per:(i % args.slots + 1) * per]))
                    for i in range(args.runs)]  # fmt: skip
            parallel = [j.result() for j in jobs]
        parallel_s = time.monotonic() - t
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("---")
    print(f"runs: {args.runs}")
    print(f"slots: {args.slots} ({per} cores each)")
    print(f"one_slot_wall_s: {serial_s:.1f}")
    print(f"slots_wall_s: {parallel_s:.1f}")
    print(f"runs_per_hour_one_slot: {args.runs * 3600 / serial_s:.1f}")
    print(f"runs_per_hour_slots: {args.runs * 3600 / parallel_s:.1f}")
    print(f"speedup: {serial_s / parallel_s:.2f}")
    print(f"{program.spec.metric}_one_slot: {statistics.fmean(serial):.6f}")
    print(f"{program.spec.metric}_slots: {statistics.fmean(parallel):.6f}")


if __name__ == "__main__":
    main()
