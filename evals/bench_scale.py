"""Does the device wait for a model, and do more slots give more experiments an hour?

A real campaign (git worktree, ledger, memory, the vet gates, sandboxed runs) on the tiny test
target, whose run sleeps for `--run-s` as training would, driven by a proposer whose scripted
answers take `--propose-s` each (a model's latency; the answers pick a random offered knob move).
For each configuration `depth:slots:executor[:fan_out]` (program `pipeline_depth`, org/ahead.py,
`executor`, org/slots.py, and `fan_out`, org/rounds.py: rounds of that many experiments from one
parent, side by side) one campaign of `--experiments` experiments; per campaign, over the
experiment phase (from the baseline's verdict to the last):

    duty cycle = seconds of the runs that made verdicts / (slots x wall seconds)
                                                                 (target: >= 0.95, one slot, depth 1)
    experiments per hour                                         (target: 2 slots >= 1.8x one)

`--replicates R` runs R campaigns per configuration, replicate i with the proposer's seed i in
every configuration (paired: the same answers wherever the campaigns see the same schemas), and
reports mean and sd, and each ratio of one configuration's rate to the first's per replicate.
A campaign may end early when its knob space is spent ("search space spent"): rates count the
experiments it recorded.

    python -m evals.bench_scale                          # 20 s proposer, 60 s runs (~35 min)
    python -m evals.bench_scale --run-s 6 --propose-s 2   # the same ratios, ~4 min
    python -m evals.bench_scale --configs 1:1:local 1:2:local --replicates 3
    python -m evals.bench_scale --configs 1:1:local 3:2:local:2 3:2:ray:2 --replicates 2

Prints one line per configuration, then `---` and `key: value` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def answer(rng: random.Random):
    """A scripted proposer answer: a random move among those the schema offers."""

    def pick(schema: Any, _messages: list[dict]) -> dict[str, str]:
        branches = schema.model_json_schema().get("anyOf") or [schema.model_json_schema()]
        branch = rng.choice(branches)["properties"]
        return {"hypothesis": "a random offered move", "knob": rng.choice(branch["knob"]["enum"]),
                "move": rng.choice(branch["move"]["enum"])}  # fmt: skip

    return pick


def campaign(tmp: Path, config: str, experiments: int, run_s: float, propose_s: float, seed: int = 0) -> dict[str, float]:
    from org import campaign as c
    from org.ledger import Ledger
    from tests.scripted import ScriptedClient
    from tests.tiny import make_repo

    depth, slots, kind, fan_out = (config.split(":") + ["1"])[:4]
    name = f"{config.replace(':', '-')}-s{seed}"
    org = tmp / f"org-{name}"
    org.mkdir()
    (org / "org.md").write_text("---\nname: bench-scale\nroles:\n  proposer: proposer.md\nreview: false\n---\n"
                                "A proposer only: its latency is what pipelining hides.\n")  # fmt: skip
    shutil.copy(ROOT / "roles" / "tiered" / "proposer.md", org / "proposer.md")
    # the run is its own smoke test (a separate one would sleep too); SLEEP_S is not research
    program = make_repo(tmp / f"repo-{name}", sleep=run_s, pipeline_depth=depth,
                        smoke_inline_s="5", fixed_knobs="[SLEEP_S]", run_timeout_s=str(run_s * 3 + 60),
                        executor=f"{{kind: {kind}, slots: {slots}}}", fan_out=fan_out)  # fmt: skip
    # the same answers in every configuration: the same experiments, kept or not alike
    client = ScriptedClient(default={"proposer": answer(random.Random(seed))}, delay_s={"proposer": propose_s})
    tag = f"scale-{name}"
    # a memory of its own: a campaign that inherited another's notes (same target) would be
    # offered fewer moves, and the configurations would not be compared on the same search
    c.start(program, org, tag=tag, max_experiments=experiments, models=client, memory_home=tmp / "memory" / name)
    events = [json.loads(line) for line in (c.campaign_dir(tag) / "events.jsonl").read_text().splitlines()]
    records = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in events if e["event"] == "record"]
    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    # every run an experiment's verdict used, on whichever slot (a first run made ahead and thrown
    # away is not one); with one slot, the seconds it ran the target
    ran = sum(e["seconds"] for e in events if e["event"] == "run_done" and e["exp"] > 0)
    done = len(records) - 1  # the baseline's record starts the clock
    runs = sum(len(ledger.runs(n)) for n in range(1, done + 1))
    rows = ledger.experiments()
    keeps = sum(r["status"] == "keep" for r in rows[1:])
    best = min(r["metric"] for r in rows if r["status"] == "keep") - rows[0]["metric"]  # the search's progress
    ledger.close()
    unused = sum(e["event"] == "ahead_run_unused" for e in events)  # runs made ahead and thrown away
    wall = records[-1] - records[0]
    return {"wall_s": wall, "run_s": ran, "runs": runs, "experiments": done, "duty": ran / (int(slots) * wall),
            "per_hour": done * 3600 / wall, "keeps": keeps, "unused": unused, "best_delta": best}  # fmt: skip


def _spread(values: list[float], digits: int) -> str:
    import statistics

    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.{digits}f}{sd}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=6)
    ap.add_argument("--run-s", type=float, default=60.0, help="seconds each run trains (sleeps)")
    ap.add_argument("--propose-s", type=float, default=20.0, help="seconds each proposer answer takes")
    ap.add_argument("--configs", nargs="+", default=["0:1:local", "1:1:local", "1:2:local", "1:2:ray"],
                    help="depth:slots:executor[:fan_out] per campaign")
    ap.add_argument("--replicates", type=int, default=1, help="campaigns per configuration (proposer seeds 0..R-1)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ.update(NIGHTLAB_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    results: dict[str, list[dict[str, float]]] = {config: [] for config in args.configs}
    t0 = time.monotonic()
    for seed in range(args.replicates):  # replicate-major: a run cut short stays balanced
        for config in args.configs:
            r = campaign(tmp, config, args.experiments, args.run_s, args.propose_s, seed)
            results[config].append(r)
            print(f"{config} seed {seed}: {r['experiments']} experiments, wall {r['wall_s']:.1f} s, ran {r['run_s']:.1f} s "
                  f"over {r['runs']} runs, duty cycle {r['duty']:.3f}, {r['per_hour']:.1f} experiments/h, {r['keeps']} kept (best {r['best_delta']:+.4f}), "
                  f"{r['unused']} runs made ahead not used", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    first = args.configs[0]
    print("---")
    print(f"date: {time.strftime('%Y-%m-%d')}")
    print(f"machine: {os.cpu_count()} cores")
    print(f"run_s: {args.run_s:g}")
    print(f"propose_s: {args.propose_s:g}")
    print(f"experiments: {args.experiments}")
    print(f"replicates: {args.replicates}")
    for config, rs in results.items():
        key = config.replace(":", "_")
        print(f"duty_cycle_{key}: {_spread([r['duty'] for r in rs], 3)}")
        print(f"experiments_per_hour_{key}: {_spread([r['per_hour'] for r in rs], 1)}")
        print(f"best_delta_{key}: {_spread([r['best_delta'] for r in rs], 4)}")
        if config != first:
            ratios = [r["per_hour"] / f["per_hour"] for r, f in zip(rs, results[first], strict=True)]
            print(f"ratio_{key}_vs_{first.replace(':', '_')}: {_spread(ratios, 2)} "
                  f"(per replicate: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"wall_min: {(time.monotonic() - t0) / 60:.1f}")


if __name__ == "__main__":
    main()
