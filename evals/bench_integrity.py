"""Can the keep rule be fooled by noise, and does it still find real wins? On the real `cpu` preset.

Every change goes through a real campaign (git worktree, vet gates, sandboxed `python -m
trainer.train` runs, replicates, the judge, the ledger) on a clone of this checkout; only the
proposer's answers are scripted (`roles/solo`, edit mode). Nothing else is faked.

- null: changes with no real effect (refactors, renames, reordered lines, an eval batch size,
  a seed change dressed up with a no-op, numerically negligible constants, ...), one campaign,
  each against the best so far. Target: 0 kept.
- power: starting points made deliberately worse (MATRIX_LR x0.1, no warmdown, ...), one campaign
  each: the program's `knobs:` sets the worse start, the proposer's one change undoes it.
  Target: >= 4 of 5 kept.

    python -m evals.bench_integrity                   # both (~1 h on 2 cores)
    python -m evals.bench_integrity --only null --null 5
Prints one line per verdict, then `---` and `key: value` lines.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAIN = "train.py"

# (name, [(search, replace), ...]): each is a change that cannot change what the model learns, or
# changes it by far less than the noise.
NULL_CHANGES: list[tuple[str, list[tuple[str, str]]]] = [
    ("seed change plus a comment", [("SEED = 42", "SEED = 43"), ("# ---- Model ----", "# ---- Model (GPT) ----")]),
    ("seed change plus a renamed variable", [("SEED = 42", "SEED = 7"),
                                             ("smooth = 0.9 * smooth + 0.1 * loss_f", "ema = 0.9 * smooth + 0.1 * loss_f\n        smooth = ema")]),
    ("rename a local variable", [("smooth = 0.9 * smooth + 0.1 * loss_f", "ema = 0.9 * smooth + 0.1 * loss_f\n        smooth = ema")]),
    ("reorder two independent knob lines", [("ADAM_BETA1 = 0.8  # AdamW beta1\nADAM_BETA2 = 0.95  # AdamW beta2",
                                             "ADAM_BETA2 = 0.95  # AdamW beta2\nADAM_BETA1 = 0.8  # AdamW beta1")]),
    ("square written as a power", [("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x)) ** 2")]),
    ("eval batch size halved", [("EVAL_BATCH_SIZE = 32", "EVAL_BATCH_SIZE = 16")]),
    ("eval batch size doubled", [("EVAL_BATCH_SIZE = 32", "EVAL_BATCH_SIZE = 64")]),
    ("log every 5 steps", [("if step % 10 == 0:", "if step % 5 == 0:")]),
    ("an unused helper with an eval-like name", [("def lr_multiplier(", "def evaluate_schedule(progress: float) -> list[float]:\n"
                                                 "    return [lr_multiplier(p / 10) for p in range(10)]\n\n\ndef lr_multiplier(")]),
    ("rename the MLP class", [("class MLP(nn.Module):", "class FeedForward(nn.Module):"),
                              ("self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)",
                               "self.attn, self.mlp = Attention(cfg, layer), FeedForward(cfg)")]),
    ("rms norm shape via a slice", [("return F.rms_norm(x, (x.size(-1),))", "return F.rms_norm(x, x.shape[-1:])")]),
    ("zero grads through the optimizers", [("        model.zero_grad(set_to_none=True)\n        loss_f",
                                            "        for opt in optimizers:\n            opt.zero_grad(set_to_none=True)\n        loss_f")]),
    ("split a chained assignment", [("x = x0 = norm(self.wte(idx))", "x0 = norm(self.wte(idx))\n        x = x0")]),
    ("COMPILE off (eager on CPU anyway)", [("COMPILE = True", "COMPILE = False")]),
    ("an extra progress print", [("    model.eval()\n", "    print(f\"trained {step} steps\", flush=True)\n    model.eval()\n")]),
    ("rotary base nudged by 1e-6", [("ROPE_BASE = 10000.0", "ROPE_BASE = 10000.01")]),
    ("softcap nudged by 1e-6", [("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 15.00001")]),
    ("weight decay 0 -> 1e-9", [("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 1e-9")]),
    ("Muon momentum +1e-5", [("MUON_MOMENTUM = 0.95", "MUON_MOMENTUM = 0.95001")]),
    ("lm_head init std +1e-7", [("std=0.001)", "std=0.0010001)")]),
    ("final lr fraction 0 -> 1e-6", [("FINAL_LR_FRAC = 0.0", "FINAL_LR_FRAC = 1e-6")]),
    ("docstring rewritten", [("\"\"\"torch.optim.Muon's quintic", "\"\"\"The quintic (as in torch.optim.Muon)")]),
]

# (name, the worse start as program knobs, the knob the proposer restores, its shipped value)
POWER_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("MATRIX_LR x0.1", {"MATRIX_LR": 0.002}, "MATRIX_LR", "0.02"),
    # not "no warmdown": at the cpu preset's 20 steps no warmdown is *better* (measured, BENCHMARKS)
    ("MATRIX_LR x10", {"MATRIX_LR": 0.2}, "MATRIX_LR", "0.02"),
    ("EMBEDDING_LR x0.1", {"EMBEDDING_LR": 0.03}, "EMBEDDING_LR", "0.3"),
    ("UNEMBEDDING_LR x0.1", {"UNEMBEDDING_LR": 0.0004}, "UNEMBEDDING_LR", "0.004"),
    ("half the budget spent warming up", {"WARMUP_RATIO": 0.5}, "WARMUP_RATIO", "0.0"),
]


def edit(hypothesis: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {"hypothesis": hypothesis, "edits": [{"path": TRAIN, "search": s, "replace": r} for s, r in pairs]}


def restore(knob: str, value: str):
    """A scripted answer that puts `knob` back to `value`, whatever line the program's override wrote."""

    def answer(_schema: Any, messages: list[dict]) -> dict[str, Any]:
        text = "\n".join(m["content"] for m in messages)
        line = re.search(rf"^{knob} = [^\n]*$", text, flags=re.M)
        assert line, f"{knob} not in the prompt"
        comment = line.group(0).split("#", 1)[1] if "#" in line.group(0) else ""
        return edit(f"restore {knob} to {value}: the worse start hurts",
                    [(line.group(0), f"{knob} = {value}" + (f"  #{comment}" if comment else ""))])

    return answer


def program_text(knobs: dict[str, Any]) -> str:
    """The quickstart program, with a worse start when `knobs` says so. Its run timeout is raised:
    the verdicts do not depend on the machine's load (the budget is FLOPs), the wall time does."""
    text = (ROOT / "programs" / "quickstart.md").read_text().replace("run_timeout_s: 300", "run_timeout_s: 1200")
    # the keep rule's own false-keep rate: no shortcut for exact no-ops (org/verdict.py)
    text = text.replace("  deterministic: true\n", "  deterministic: false\n")
    if not knobs:
        return text
    block = "knobs:\n" + "".join(f"  {k}: {v}\n" for k, v in knobs.items())
    return text.replace("stop:\n", block + "stop:\n", 1)


def campaign(repo: Path, tag: str, knobs: dict[str, Any],
             answers: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """Run the answers as one campaign; its experiment rows and its vet/apply failures. A change
    stopped at vet is not an experiment: when the script runs dry the proposer answers nothing
    until the campaign stops on failures in a row."""
    from org import campaign as c
    from org.ledger import Ledger
    from tests.scripted import ScriptedClient

    program = repo / "programs" / f"integrity-{tag}.md"
    program.write_text(program_text(knobs))
    client = ScriptedClient(script={"proposer": answers}, default={"proposer": None})
    c.start(program, ROOT / "roles" / "solo", tag=tag, max_experiments=len(answers), models=client)
    ledger = Ledger(c.campaign_dir(tag) / "ledger.db")
    rows = ledger.experiments()
    failures = [f for f in ledger.failures() if f["hypothesis"]]
    ledger.close()
    return rows, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["null", "power"], help="run one half")
    ap.add_argument("--null", type=int, default=len(NULL_CHANGES), help="how many null changes")
    ap.add_argument("--power", type=int, default=len(POWER_CASES), help="how many power cases")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-integrity-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp / "repo")], check=True)
    os.environ.update(NIGHTLAB_HOME=str(tmp / "home"), HF_HUB_OFFLINE="1", LITELLM_LOCAL_MODEL_COST_MAP="True")
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--preset", "cpu"], cwd=tmp / "repo", check=True)
    t0 = time.monotonic()
    results: dict[str, list[tuple[str, str, int]]] = {"null": [], "power": []}  # (name, verdict, runs)

    if args.only in (None, "null"):
        changes = NULL_CHANGES[: args.null]
        rows, failures = campaign(tmp / "repo", "null", {}, [edit(name, pairs) for name, pairs in changes])
        judged = {r["description"].split(" [")[0]: r for r in rows[1:]}
        for name, _ in changes:
            row = judged.get(name)
            if row is None:  # stopped before a run: the vet gates
                fail = next((f for f in failures if f["hypothesis"] == name), None)
                verdict, runs = (f"vet: {fail['stage']}: {fail['reason'][:60]}" if fail else "not reached"), 0
            else:
                verdict = row["status"] + (" (inconclusive)" if row["inconclusive"] else "")
                verdict += "" if row["delta"] is None else f" delta {row['delta']:+.4f} conf {row['confidence'] or 0:.2f}"
                runs = row["runs"]
            results["null"].append((name, verdict, runs))
            print(f"null  {name:45s} {verdict}  runs {runs}", flush=True)

    if args.only in (None, "power"):
        for i, (name, start, knob, value) in enumerate(POWER_CASES[: args.power]):
            rows, failures = campaign(tmp / "repo", f"power{i}", start, [restore(knob, value)])
            if len(rows) < 2:
                reason = failures[0]["reason"][:80] if failures else "no run"
                results["power"].append((name, f"not run: {reason}", 0))
                print(f"power {name:45s} not run: {reason}", flush=True)
                continue
            row = rows[1]
            verdict = f"{row['status']} delta {row['delta'] or 0:+.4f} conf {row['confidence'] or 0:.3f}"
            results["power"].append((name, verdict, row["runs"]))
            print(f"power {name:45s} {verdict}  runs {row['runs']} (baseline {rows[0]['metric']:.4f})", flush=True)

    wall = time.monotonic() - t0
    print("---")
    print(f"date: {time.strftime('%Y-%m-%d')}")
    print(f"machine: {os.cpu_count()} cores")
    nulls = results["null"]
    if nulls:
        kept = sum(v.startswith("keep") for _, v, _ in nulls)
        ran = [r for _, v, r in nulls if r]
        print(f"null_changes: {len(nulls)}")
        print(f"null_kept: {kept}  (target 0)")
        print(f"null_false_keep_rate: {kept / len(nulls):.3f}")
        print(f"null_stopped_at_vet: {sum(r == 0 for _, _, r in nulls)}")
        print(f"null_runs_per_verdict: {statistics.fmean(ran) if ran else 0:.2f} (of those that ran)")
    power = results["power"]
    if power:
        print(f"power_cases: {len(power)}")
        print(f"power_kept: {sum(v.startswith('keep') for _, v, _ in power)}  (target >= 4 of 5)")
        print(f"power_runs_per_verdict: {statistics.fmean(r for _, _, r in power):.2f}")
    print(f"wall_min: {wall / 60:.1f}")


if __name__ == "__main__":
    main()
