"""trainer/train.py as the harness runs it: a real subprocess on the prepared stdlib corpus."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_mem_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth"]


@pytest.fixture(scope="session")
def prepared_cpu(session_cache) -> Path:
    """The real offline cpu-preset cache, built once per session by the CLI."""
    env = {**os.environ, "NIGHTLAB_CACHE": str(session_cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "trainer.prepare", "--preset", "cpu"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return session_cache


def run_train(script: Path, cache: Path, timeout: int, smoke: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "NIGHTLAB_CACHE": str(cache), "PYTHONPATH": str(REPO), "NIGHTLAB_PRESET": "cpu"}
    if smoke:
        env |= {"NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_SECONDS": "2"}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def parse_summary(stdout: str) -> dict[str, float]:
    lines = stdout.splitlines()
    assert "---" in lines, stdout[-2000:]
    block = lines[len(lines) - 1 - lines[::-1].index("---") + 1:]
    pairs = [line.split(":", 1) for line in block]
    assert [k for k, _ in pairs] == SUMMARY_KEYS
    return {k: float(v) for k, v in pairs}


def test_smoke_run_prints_the_exact_summary_block(prepared_cpu):
    out = run_train(REPO / "trainer" / "train.py", prepared_cpu, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    s = parse_summary(out.stdout)
    assert math.isfinite(s["val_bpb"]) and 0.5 < s["val_bpb"] < 8.0
    assert s["num_steps"] >= 2 and s["depth"] == 4
    assert (s["mfu_percent"] > 0) if torch.cuda.is_available() else (s["mfu_percent"] == 0.0)
    assert 1.0 <= s["num_params_M"] <= 2.5  # the cpu preset is ~1-2M params
    assert s["training_seconds"] >= 2.0 and s["total_seconds"] >= s["training_seconds"]


def test_nan_loss_prints_fail_and_exits_1(prepared_cpu, tmp_path):
    broken = tmp_path / "train.py"
    source = (REPO / "trainer" / "train.py").read_text()
    assert "LOGIT_SOFTCAP = 15.0" in source
    broken.write_text(source.replace("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = 0.0"))  # 0/0 in the cap
    out = run_train(broken, prepared_cpu, timeout=180)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("FAIL: loss is nan")
    assert "---" not in out.stdout.splitlines()


def test_bad_knob_combination_fails_fast(prepared_cpu, tmp_path):
    broken = tmp_path / "train.py"
    source = (REPO / "trainer" / "train.py").read_text()
    broken.write_text(source.replace("TOTAL_BATCH_TOKENS = 2**13", "TOTAL_BATCH_TOKENS = 1000"))
    out = run_train(broken, prepared_cpu, timeout=120)
    assert out.returncode == 1 and "FAIL: TOTAL_BATCH_TOKENS=1000" in out.stdout


def test_missing_or_torn_cache_is_one_fail_line(prepared_cpu, tmp_path):
    empty = tmp_path / "no-cache"
    out = run_train(REPO / "trainer" / "train.py", empty, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert out.stdout.splitlines()[-1].startswith(f"FAIL: {empty}") and "run: python -m trainer.prepare" in out.stdout
    torn = tmp_path / "torn"
    shutil.copytree(prepared_cpu / "data", torn / "data")
    meta = torn / "data" / "cpu" / "meta.json"
    meta.write_text(meta.read_text()[:20])  # a write cut short
    out = run_train(REPO / "trainer" / "train.py", torn, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr
    assert f"FAIL: {meta}: unreadable cache metadata" in out.stdout


@pytest.mark.slow
def test_full_cpu_preset_run_learns(prepared_cpu):
    """The real quickstart run: 60 s of training on 2 cores must clearly beat a uniform predictor."""
    out = run_train(REPO / "trainer" / "train.py", prepared_cpu, timeout=600, smoke=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    s = parse_summary(out.stdout)
    assert s["training_seconds"] >= 60.0
    # A model that learned nothing predicts uniformly: log2(V) bits per non-special target token.
    # How far below that it gets depends on how many steps the machine allows in 60 s.
    import numpy as np

    data = prepared_cpu / "data" / "cpu"
    token_bytes = np.load(data / "token_bytes.npy")
    val = np.fromfile(data / "val.bin", dtype=np.uint16)
    nbytes = token_bytes[val]
    uniform = (nbytes > 0).sum() * math.log2(len(token_bytes)) / nbytes.sum()
    assert s["val_bpb"] < 0.9 * uniform, (s, uniform)


def test_heldout_harness_scores_the_same_model_on_the_test_split(prepared_cpu, tmp_path):
    env = {**os.environ, "NIGHTLAB_CACHE": str(prepared_cpu), "PYTHONPATH": str(REPO), "NIGHTLAB_PRESET": "cpu",
           "NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_SECONDS": "2"}
    result = tmp_path / "heldout.json"
    out = subprocess.run([sys.executable, "-m", "trainer.heldout", "--script", "trainer/train.py", "--out", str(result)],
                         env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    s = parse_summary(out.stdout)  # train.py's own output passes through untouched
    r = json.loads(result.read_text())
    assert r["val_bpb"] == pytest.approx(s["val_bpb"], abs=1e-6)
    assert math.isfinite(r["test_bpb"]) and r["test_bpb"] != r["val_bpb"]
    assert abs(r["test_bpb"] - r["val_bpb"]) < 1.0  # same distribution, same model


def test_heldout_reports_a_crashing_script(prepared_cpu, tmp_path):
    broken = tmp_path / "train.py"
    broken.write_text("raise SystemExit(1)\n")
    env = {**os.environ, "NIGHTLAB_CACHE": str(prepared_cpu), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "trainer.heldout", "--script", str(broken), "--out",
                          str(tmp_path / "r.json")], env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 1 and not (tmp_path / "r.json").exists()
