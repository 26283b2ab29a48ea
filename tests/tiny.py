"""A tiny target repo for campaign tests: knob constants, a deterministic metric, a summary block.

metric = 1 + 0.1*(log10(LR) + 1.5)**2 + 0.01*(DEPTH - 4)**2 + (0 if USE_GATE else 0.05)
         + TINY_NOISE * N(0, 1) drawn from the seed TINY_SEED (both env vars; no noise by default)
         + the number in $TINY_DRIFT (the machine changed: a test edits the program's env)
LR 0.01 -> 0.02 -> 0.04 improves; DEPTH away from 4 hurts; DEPTH < 3 crashes; SLEEP_S slows a run.
The "model" a run saves at $NIGHTLAB_CHECKPOINT is a JSON file; target/heldout.py scores it: the
held-out metric is the val metric + 0.01, + 0.2 with USE_GATE (a gain that does not generalise),
and it re-scores val (the metric the run computed, whatever the run then printed).
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

TRAIN = '''\
"""Tiny stand-in for a training script (nightlab tests)."""
import json
import math
import os
import random
import sys
import time

from target.prepare import BUDGET

LR = 0.01  # learning rate
DEPTH = 4  # blocks
USE_GATE = False  # gated units
SLEEP_S = {sleep}  # pretend to train this long
NAME = "tiny"  # not movable

time.sleep(SLEEP_S)
if DEPTH < 3:
    print("FAIL: too shallow", file=sys.stderr)
    sys.exit(1)
metric = 1 + 0.1 * (math.log10(LR) + 1.5) ** 2 + 0.01 * (DEPTH - 4) ** 2 + (0 if USE_GATE else 0.05)
noise = float(os.environ.get("TINY_NOISE", "0"))
seed = os.environ.get("TINY_SEED", "0")
metric += noise * random.Random(seed).gauss(0, 1)
metric += float(os.environ.get("TINY_DRIFT", "0"))
if os.environ.get("NIGHTLAB_CHECKPOINT"):
    with open(os.environ["NIGHTLAB_CHECKPOINT"], "w") as f:
        f.write(json.dumps({{"val": metric, "test": metric + 0.01 + (0.2 if USE_GATE else 0.0)}}))
print("step 1 loss 3.2")
print("---")
print(f"val_bpb: {{metric:.6f}}")
print(f"peak_mem_mb: {{DEPTH * 512.0:.1f}}")
print(f"training_seconds: {{BUDGET}}")
'''

PREPARE = '''\
"""Fixed harness: the org never edits this."""
BUDGET = 1.0
'''

HELDOUT = '''\
"""Fixed harness: scores the saved models on "held-out data"."""
import json
import os
import statistics

paths = [p for p in os.environ.get("NIGHTLAB_CHECKPOINTS", "").split(os.pathsep) if p]
models = [json.load(open(p)) for p in paths]
print("---")
print(f"test_bpb: {statistics.fmean(m['test'] for m in models):.6f}")
print(f"test_models: {len(models)}")
print(f"val_bpb: {statistics.fmean(m['val'] for m in models):.6f}")
for i, m in enumerate(models, 1):
    print(f"val_bpb_{i}: {m['val']:.6f}")
'''


def program_text(**front: str) -> str:
    fields = {
        "name": "tiny",
        "target": "target/",
        "editable": "[train.py]",
        "protected": "[prepare.py]",
        "run": "python -m target.train",
        "metric": "val_bpb",
        "direction": "min",
        "run_timeout_s": "30",
        "time_budget_s": "1",
        # deterministic: one run tells (the noisy variant sets TINY_NOISE and seeds by TINY_SEED)
        "noise": "{baseline_runs: 1, max_replicates: 0}",
    }
    fields.update(front)
    body = "\n".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    return f"---\n{body}\n---\nTune the learning rate first, then the architecture.\n"


def make_repo(root: Path, sleep: float = 0.0, **front: str) -> Path:
    """A git repo with target/train.py, target/prepare.py and programs/tiny.md; returns the program."""
    (root / "target").mkdir(parents=True)
    (root / "programs").mkdir()
    (root / "target" / "__init__.py").write_text("")
    (root / "target" / "train.py").write_text(TRAIN.format(sleep=sleep))
    (root / "target" / "prepare.py").write_text(PREPARE)
    (root / "target" / "heldout.py").write_text(HELDOUT)
    program = root / "programs" / "tiny.md"
    program.write_text(program_text(**front))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny target"], cwd=root, check=True)
    return program


def knob(knob: str, move: str, hypothesis: str = "should help") -> dict:
    return {"hypothesis": hypothesis, "knob": knob, "move": move}


DIRECTIVE = {"assessment": "LR matters most.", "focus": "Try LR x2.", "avoid": ""}
APPROVE = {"approve": True, "reason": "plausible"}


def dedent(s: str) -> str:
    return textwrap.dedent(s)
