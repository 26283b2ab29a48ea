"""Benchmark the default target: throughput, val_bpb and run-to-run noise of the cpu preset;
MFU of the gpu preset when CUDA is available.

    python -m evals.bench_trainer                 # 5 seeds of the cpu preset (~4 min on 2 cores)
    python -m evals.bench_trainer --seeds 42      # one run
    python -m evals.bench_trainer --gpu           # also the gpu preset (needs CUDA + climbmix data)

Targets: cpu >= 9k tokens/s on a 2-core machine; cpu val_bpb sigma over 5 seeds <= 0.01 (the cpu
preset's budget is FLOPs, so only the seed should move it); gpu MFU >= 40 % on an H100.
Each run is the real `python -m trainer.train` in a subprocess on a copy of train.py whose SEED
(and, for gpu, size knobs) are rewritten; tokens/s is the median of the per-step log lines.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the h100 starting point (autoresearch's model); the campaign applies the same via programs/h100.md
GPU_KNOBS = {"DEPTH": "8", "ASPECT_RATIO": "64", "HEAD_DIM": "128", "TOTAL_BATCH_TOKENS": "2**19",
             "DEVICE_BATCH_SIZE": "128", "MATRIX_LR": "0.04", "WEIGHT_DECAY": "0.2", "EMBEDDING_LR": "0.6"}


def with_knobs(source: str, knobs: dict[str, str]) -> str:
    for name, value in knobs.items():
        source, n = re.subn(rf"^{name} = [^#\n]+?(\s*#)", rf"{name} = {value}\1", source, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"bench: knob {name} not found in trainer/train.py")
    return source


def run(preset: str, knobs: dict[str, str], timeout: int, source: str | None = None) -> dict:
    """One real run of train.py (or of `source`, another version of it) with `knobs` rewritten."""
    src = with_knobs(source if source is not None else (REPO / "trainer" / "train.py").read_text(), knobs)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "train.py"
        script.write_text(src)
        env = {**os.environ, "NIGHTLAB_PRESET": preset, "PYTHONPATH": str(REPO)}
        env.pop("NIGHTLAB_SMOKE", None)
        t0 = time.time()
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench: run failed ({preset}, {knobs}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    summary = dict(line.split(":", 1) for line in out.stdout.split("\n---\n")[-1].splitlines())
    rates = [float(m.replace(",", "")) for m in re.findall(r"\| ([\d,]+) tok/s", out.stdout)]
    return {"val_bpb": float(summary["val_bpb"]), "mfu": float(summary["mfu_percent"]),
            "tok_s": statistics.median(rates[1:] or rates), "steps": int(summary["num_steps"]),
            "params_M": float(summary["num_params_M"]), "peak_mem_mb": float(summary["peak_mem_mb"]),
            "train_s": float(summary["training_seconds"]), "wall": time.time() - t0}


def prepare(preset: str) -> None:
    subprocess.run([sys.executable, "-m", "trainer.prepare", "--preset", preset], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="42,43,44,45,46", help="comma-separated SEED values for the cpu runs")
    ap.add_argument("--gpu", action="store_true", help="also run the gpu preset (CUDA only)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per run before giving up")
    args = ap.parse_args()

    prepare("cpu")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    for seed in seeds:
        r = run("cpu", {"SEED": str(seed)}, args.timeout)
        print(f"cpu seed {seed}: val_bpb {r['val_bpb']:.4f}  {r['tok_s']:,.0f} tok/s  {r['steps']} steps  "
              f"{r['wall']:.0f}s wall", flush=True)
        runs.append(r)
    bpbs = [r["val_bpb"] for r in runs]
    print("---")
    print(f"machine:             {platform.machine()} {os.cpu_count()} cores, {platform.processor() or 'cpu'}")
    print(f"date:                {time.strftime('%Y-%m-%d')}")
    print(f"cpu_params_M:        {runs[0]['params_M']}")
    print(f"cpu_tokens_per_sec:  {statistics.median(r['tok_s'] for r in runs):.0f}")
    print(f"cpu_val_bpb_mean:    {statistics.mean(bpbs):.4f}")
    print(f"cpu_val_bpb_sigma:   {statistics.stdev(bpbs) if len(bpbs) > 1 else 0.0:.4f}")
    print(f"cpu_val_bpb_range:   {min(bpbs):.4f} .. {max(bpbs):.4f}")
    print(f"cpu_steps:           {sorted({r['steps'] for r in runs})}")
    print(f"cpu_train_seconds:   {statistics.median(r['train_s'] for r in runs):.1f} (median)")
    print(f"cpu_run_wall_s:      {statistics.median(r['wall'] for r in runs):.1f} (median, start-up and eval included)")
    print(f"cpu_peak_mem_mb:     {max(r['peak_mem_mb'] for r in runs):.0f}")
    print(f"cpu_runs:            {len(runs)}")
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("gpu_mfu_percent:     n/a (no CUDA device)")
            return
        prepare("gpu")
        g = run("gpu", GPU_KNOBS, args.timeout)
        print(f"gpu_device:          {torch.cuda.get_device_name()}")
        print(f"gpu_mfu_percent:     {g['mfu']:.2f}")
        print(f"gpu_tokens_per_sec:  {g['tok_s']:.0f}")
        print(f"gpu_val_bpb:         {g['val_bpb']:.4f}")
        print(f"gpu_peak_mem_mb:     {g['peak_mem_mb']:.0f}")


if __name__ == "__main__":
    main()
