"""Orchestration overhead of one campaign cycle, excluding LLM calls and the run itself.

A real campaign (git worktree, SQLite ledger and checkpoints, memory with embeddings, the
shipped `roles/tiered` prompts) drives a trivial target with scripted model answers. Per cycle:
wall time between two recorded experiments, minus the model-call time and the run's time.

    python -m evals.bench_loop --cycles 50
Prints `---` then `key: value` lines (target: overhead_median_s <= 1.0).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

TRAIN = '''\
WIDTH = 2  # width; powers of two are good, anything else is bad
print("---")
print(f"val_bpb: {1.0 / WIDTH + (0.0 if WIDTH & (WIDTH - 1) == 0 else 1.0):.9f}")
print("peak_mem_mb: 1.0")
'''
PROGRAM = """---
name: bench-loop
target: target/
editable: [train.py]
run: python target/train.py
metric: val_bpb
time_budget_s: 1
smoke_timeout_s: {smoke}
---
Double WIDTH.
"""


def make_repo(root: Path, smoke: bool) -> Path:
    (root / "target").mkdir(parents=True)
    (root / "target" / "train.py").write_text(TRAIN)
    (root / "program.md").write_text(PROGRAM.format(smoke=30 if smoke else "null"))
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "trivial target"], cwd=root, check=True)
    return root / "program.md"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=50, help="experiments after the baseline")
    ap.add_argument("--org", default=str(Path(__file__).resolve().parents[1] / "roles" / "tiered"),
                    help="org folder whose prompts are rendered (models are scripted)")
    ap.add_argument("--smoke", action="store_true",
                    help="keep the vet smoke run on (it is a run too: off by default here)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    os.environ["NIGHTLAB_HOME"] = str(tmp / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from org import campaign as c
    from org.ledger import Ledger
    from tests.scripted import ScriptedClient

    program = make_repo(tmp / "repo", args.smoke)
    step = iter(range(10**9))
    # keep (x2 stays a power of two), discard (x1.5 never is): new absolute values every time
    propose = lambda schema, messages: {"hypothesis": "wider", "knob": "WIDTH",
                                        "move": "x2" if next(step) % 2 == 0 else "x1.5"}
    client = ScriptedClient(default={
        "proposer": propose, "reviewer": {"approve": True, "reason": "ok"},
        "director": {"assessment": "a", "focus": "double WIDTH", "avoid": ""},
        "compactor": {"lessons": []},
    })
    marks: list[tuple[float, dict]] = []

    def progress(**info: object) -> None:
        if info.get("phase") == "record":
            marks.append((time.monotonic(), dict(info["overhead"])))  # type: ignore[arg-type]

    t0 = time.monotonic()
    c.start(program, args.org, tag="bench", max_experiments=args.cycles, models=client,
            progress=progress)
    total = time.monotonic() - t0
    rows = Ledger(c.campaign_dir("bench") / "ledger.db").experiments()

    overheads, nodes = [], {}
    for (t_a, oh_a), (t_b, oh_b) in itertools.pairwise(marks):
        d = {k: oh_b.get(k, 0.0) - oh_a.get(k, 0.0) for k in oh_b}
        overheads.append(t_b - t_a - d.get("run", 0.0) - d.get("llm", 0.0))
        for k, v in d.items():
            nodes.setdefault(k, []).append(v)
    print("---")
    print(f"cycles: {len(overheads)}")
    print(f"overhead_median_s: {statistics.median(overheads):.4f}")
    print(f"overhead_p90_s: {sorted(overheads)[int(0.9 * (len(overheads) - 1))]:.4f}")
    print(f"overhead_max_s: {max(overheads):.4f}")
    print(f"first_cycle_s: {overheads[0]:.4f}")
    print(f"run_median_s: {statistics.median(nodes.get('run', [0.0])):.4f}")
    for k in ("setup", "direct", "propose", "apply", "vet", "judge", "record", "compact"):
        if k in nodes:
            print(f"node_{k}_median_s: {statistics.median(nodes[k]):.4f}")
    print(f"kept: {sum(r['status'] == 'keep' for r in rows[1:])}")
    print(f"smoke_gate: {'on' if args.smoke else 'off'}")
    print(f"total_s: {total:.1f}")


if __name__ == "__main__":
    main()
