"""Benchmark the embedded model path: knob-mode proposal latency, schema validity, load time,
`nightlab --help` wall time, and a grammar validity sweep. Prints a `---` block of `key: value` lines.

Targets: <= 5 s per knob-mode proposal with a ~1k-token prompt on 2 cores, 50/50 schema-valid,
warm model load <= 2 s, `nightlab --help` <= 1 s; sweep: every grammar-constrained generation
valid JSON and schema-valid (100 %).

The prompt's long prefix (role prompt, knobs, memory notes) is the same every call, as in a
campaign; the last lines (recent results) change per call, so llama.cpp can only reuse the
prefix. The first call pays for the whole prompt and is reported separately.

    .venv/bin/python evals/bench_models.py --calls 50 --sweep 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRAIN = """DEPTH = 4  # transformer blocks
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO
HEAD_DIM = 64  # attention head size
WINDOW_PATTERN = "L"  # sliding window pattern per layer
TOTAL_BATCH_TOKENS = 2**14  # tokens per optimizer step
DEVICE_BATCH_SIZE = 16  # rows per micro-batch
MATRIX_LR = 0.02  # Muon learning rate
EMBED_LR = 0.3  # AdamW lr for embeddings
UNEMBED_LR = 0.004  # AdamW lr for the output head
SCALAR_LR = 0.5  # AdamW lr for scalars
WEIGHT_DECAY = 0.0  # AdamW weight decay
WARMUP_RATIO = 0.0  # fraction of the budget spent warming up
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying
FINAL_LR_FRAC = 0.0  # lr at the end as a fraction of the peak
USE_VALUE_EMBEDS = True  # value embeddings on alternate layers
SOFTCAP = 15.0  # logit soft cap
"""

ROLE = """---
model: local/gemma3-270m
temperature: 0.7
max_tokens: 200
mode: knob
---
You are the proposer in an autonomous ML research org. The target is a small GPT trained
for a fixed time budget; the metric is val_bpb (validation bits per byte, lower is better).
Each experiment changes exactly one knob of train.py by one move. Integer knobs can be
doubled (x2), halved (x0.5), scaled (x1.5, x0.67) or stepped (+1, -1); float knobs can be
scaled; boolean knobs can be toggled. Choose the change most likely to lower val_bpb given
what the org has already learned, and do not repeat an experiment that was already tried.

## Knobs in train.py
{{ knobs }}

## What the org has learned so far
{{ notes }}

## Recent results
{{ recent }}
"""


def notes_block(n: int) -> str:
    topics = ["learning rate", "batch size", "depth", "warmdown", "value embeddings", "softcap"]
    return "\n".join(
        f"- [lesson {i}] Changing the {topics[i % len(topics)]} by a factor of "
        f"{1 + (i % 3) * 0.5} moved val_bpb by {((i * 7) % 11 - 5) / 1000:+.3f}; "
        f"the effect was {'within' if i % 2 else 'outside'} the noise band of 0.002."
        for i in range(n)
    )


# ---- grammar validity sweep --------------------------------------------------------------------
# Raw generations (no retries, no validation feedback) at temperature 0.8, one seed each, over
# every schema the embedded model answers in a campaign, at its shipped role's max_tokens, plus
# schemas with free-text strings and nested objects and lists (what a user's role may ask for).

SWEEP_TEMPERATURE = 0.8


def sweep_cases() -> list[tuple[str, type, int, str]]:
    """(name, pydantic model, max_tokens, instruction) for each swept schema."""
    from typing import Literal

    from pydantic import BaseModel, Field

    from org.prompts import Directive, Lessons, Review
    from org.proposal import knob_schema, parse_knobs

    class Note(BaseModel):  # free-text strings (no pattern), a bounded list
        title: str = Field(max_length=40)
        score: int
        tags: list[str] = Field(max_length=3)

    class Setting(BaseModel):
        knob: str = Field(max_length=30)
        value: float

    class Step(BaseModel):
        name: str = Field(max_length=60)
        settings: list[Setting] = Field(min_length=1, max_length=3)
        kind: Literal["ablation", "sweep", "replicate"]
        flags: list[Literal["confirm", "heldout"]] = Field(max_length=2)

    class Plan(BaseModel):  # a list of nested objects holding lists and enums
        goal: str = Field(max_length=120)
        steps: list[Step] = Field(min_length=1, max_length=3)
        notes: list[str] | None = Field(default=None, max_length=2)

    return [
        ("knob_proposal", knob_schema(parse_knobs(TRAIN)), 384,
         "Propose one knob move for the training script:\n" + TRAIN),
        ("directive", Directive, 800, "Direct the research: the last 10 experiments found nothing."),
        ("lessons", Lessons, 1200, "Merge these notes into lessons: [1] DEPTH x2 helped. [2] LR x2 hurt."),
        ("review", Review, 400, "Review this change: MATRIX_LR 0.02 -> 0.04."),
        ("note", Note, 400, "Write a note about optimizers."),
        ("plan_nested", Plan, 600, "Plan the next experiments."),
    ]


def sweep(n: int, verbose: bool) -> dict[str, str]:
    """n generations spread over `sweep_cases()`; returns the summary lines."""
    from pydantic import ValidationError

    from org.models.registry import litellm_module

    lt = litellm_module()
    cases = sweep_cases()
    stats = {name: {"n": 0, "json": 0, "schema": 0, "cut": 0, "s": 0.0} for name, *_ in cases}
    failures: list[str] = []
    for i in range(n):
        name, model, max_tokens, instruction = cases[i % len(cases)]
        rf = {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}
        t = time.perf_counter()
        resp = lt.completion(model="local/gemma3-270m", messages=[{"role": "user", "content": instruction}],
                             response_format=rf, temperature=SWEEP_TEMPERATURE, max_tokens=max_tokens, seed=i)
        st = stats[name]
        st["s"] += time.perf_counter() - t
        st["n"] += 1
        text = resp.choices[0].message.content or ""
        st["cut"] += resp.choices[0].finish_reason == "length"
        try:
            json.loads(text)  # strict: raw control characters in strings are invalid JSON
            st["json"] += 1
            model.model_validate_json(text)
            st["schema"] += 1
        except (ValueError, ValidationError) as e:
            failures.append(f"{name} seed {i}: {str(e).splitlines()[0][:160]} | {text[:200]!r}")
        if verbose:
            print(f"sweep {i} {name}: {time.perf_counter() - t:.2f}s {text[:100]!r}", flush=True)
    total = {k: sum(st[k] for st in stats.values()) for k in ("n", "json", "schema", "cut", "s")}
    out = {
        "sweep_generations": str(total["n"]),
        "sweep_temperature": str(SWEEP_TEMPERATURE),
        "sweep_valid_json": f"{total['json']}/{total['n']}",
        "sweep_schema_valid": f"{total['schema']}/{total['n']}",
        "sweep_cut_at_max_tokens": f"{total['cut']}/{total['n']}",
        "sweep_s_per_generation": f"{total['s'] / max(1, total['n']):.2f}",
    }
    for name, st in stats.items():
        out[f"sweep_{name}"] = (f"{st['schema']}/{st['n']} schema-valid, {st['json']} json, {st['cut']} cut, "
                                f"{st['s'] / max(1, st['n']):.2f} s")
    for line in failures[:10]:
        print(f"sweep failure: {line}", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=50, help="knob-mode proposals to time")
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="approximate prompt size")
    ap.add_argument("--verbose", action="store_true", help="print every call")
    ap.add_argument("--help-runs", type=int, default=5, help="timed `nightlab --help` runs")
    ap.add_argument("--sweep", type=int, default=500, help="grammar-constrained generations to check (0: none)")
    args = ap.parse_args()

    load_start = os.getloadavg()[0]
    from org import settings
    from org.models import local
    from org.models.client import ModelClient
    from org.proposal import knob_schema, parse_knobs
    from org.roles import load_role

    t = time.perf_counter()
    local.gemma3_270m_path()
    assemble_s = time.perf_counter() - t  # includes a first-time assembly if the cache was empty

    local._verified.clear()  # warm load: file cached, new process state (sha check + Llama init)
    t = time.perf_counter()
    llama = local.load_llama("gemma3-270m")
    warm_load_s = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        role_path = Path(tmp) / "proposer.md"
        role_path.write_text(ROLE)
        role = load_role(role_path)
        knobs = parse_knobs(TRAIN)
        schema = knob_schema(knobs)

        def messages(i: int, n_notes: int) -> list[dict]:
            recent = "\n".join(f"exp {i * 3 + j}: {k.name} x2 -> val_bpb {1.10 + ((i + j) % 5) / 100:.3f} discard"
                               for j, k in enumerate(knobs[i % 5 : i % 5 + 3]))
            system = role.render(knobs=TRAIN, notes=notes_block(n_notes), recent=recent)
            return [{"role": "system", "content": system},
                    {"role": "user", "content": f"Propose experiment #{i + 1}."}]

        n_notes = 1  # grow the notes until the prompt is about --prompt-tokens long
        while True:
            text = messages(0, n_notes)[0]["content"]
            n_tok = len(llama.tokenize(text.encode()))
            if n_tok >= args.prompt_tokens or n_notes > 200:
                break
            n_notes += 2

        client = ModelClient()
        latencies, valid, first_try = [], 0, 0
        prompt_tokens = 0
        for i in range(args.calls):
            t = time.perf_counter()
            result = client.structured(role, messages(i, n_notes), schema)
            latencies.append(time.perf_counter() - t)
            if args.verbose:
                print(f"call {i}: {latencies[-1]:.2f}s attempts={result.record.attempts} "
                      f"tokens={result.record.prompt_tokens}+{result.record.completion_tokens}", flush=True)
            valid += result.value is not None
            first_try += result.record.ok and result.record.attempts == 1
            prompt_tokens = max(prompt_tokens, result.record.prompt_tokens)

    help_times = []
    for _ in range(args.help_runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "org.cli", "--help"], check=True,
                       capture_output=True, cwd=Path(__file__).resolve().parents[1])
        help_times.append(time.perf_counter() - t)

    swept = sweep(args.sweep, args.verbose) if args.sweep else {}
    rest = latencies[1:] or latencies
    print("---")
    print("model: local/gemma3-270m")
    print(f"cpu_count: {os.cpu_count()}")
    print(f"threads: {settings.local_threads()}")
    print(f"loadavg_start: {load_start:.2f}")
    print(f"loadavg_end: {os.getloadavg()[0]:.2f}")
    print(f"prompt_tokens: {prompt_tokens}")
    print(f"calls: {args.calls}")
    print(f"schema_valid: {valid}/{args.calls}")
    print(f"valid_first_try: {first_try}/{args.calls}")
    print(f"first_call_s: {latencies[0]:.2f}")
    print(f"median_call_s: {statistics.median(rest):.2f}")
    print(f"p90_call_s: {sorted(rest)[int(0.9 * (len(rest) - 1))]:.2f}")
    print(f"max_call_s: {max(latencies):.2f}")
    print(f"assemble_or_verify_s: {assemble_s:.2f}")
    print(f"warm_load_s: {warm_load_s:.2f}")
    print(f"help_median_s: {statistics.median(help_times):.2f}")
    for key, value in swept.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
