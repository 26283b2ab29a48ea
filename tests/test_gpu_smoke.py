"""The smoke run of a GPU-style program (org/smoke.py), on CPU at small scale.

A GPU program's model is far too big for a CPU smoke run (h100.md's: 16 micro-batches of a 50M
model per step; measured killed at the 90 s timeout), and its data is its own preset's. The smoke
keeps the program's env, stops after `smoke_steps` optimizer steps (counted by the harness), hides
the GPUs (`smoke_device: cpu`) and shrinks the model in a scratch copy (`smoke_knobs`): the changed
code runs in seconds. Here the "GPU program" is the real trainer with a big model set as its
starting knobs, on the cpu preset's data: the same shape of problem, at a size CI can run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from org import bwrap
from org.errors import InputError
from org.knobs import set_knobs
from org.program import load_program
from org.smoke import SmokeKnobError, smoke_env, smoke_reason, smoke_run

REPO = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(bwrap.unavailable() is not None, reason=str(bwrap.unavailable()))

BIG = {"DEPTH": 12, "ASPECT_RATIO": 64, "HEAD_DIM": 64, "TOTAL_BATCH_TOKENS": 2**15, "DEVICE_BATCH_SIZE": 8}
SMALL = "{DEPTH: 2, ASPECT_RATIO: 32, HEAD_DIM: 32, TOTAL_BATCH_TOKENS: 1024, DEVICE_BATCH_SIZE: 4}"


def _program_text(**front: str) -> str:
    text = (REPO / "programs" / "quickstart.md").read_text()
    head, body = text.split("\n---\n", 1)
    head = re.sub(r"^smoke_inline_s:.*\n", "", head + "\n", flags=re.M)
    head = head.replace("setup: python -m trainer.prepare --preset cpu\n", "")
    return head + "".join(f"{k}: {v}\n" for k, v in front.items()) + "---\n" + body


def _gpu_style_repo(tmp_path: Path, **front: str):
    """A repo holding the real trainer with the big model as its committed baseline, and a program."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "trainer", repo / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "programs").mkdir()
    program = repo / "programs" / "gpu.md"
    program.write_text(_program_text(**front))
    train = repo / "trainer" / "train.py"
    train.write_text(set_knobs(train.read_text(), BIG, program))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "gpu-style"], cwd=repo, check=True)
    return load_program(program), repo


def test_smoke_env_keeps_the_programs_preset_and_hides_gpus_only_when_asked(tmp_path):
    program, _ = _gpu_style_repo(tmp_path, smoke_timeout_s="60", smoke_knobs=SMALL, smoke_steps="3")
    env = smoke_env(program)
    assert "NIGHTLAB_PRESET" not in env  # the program's own (gpu, for h100.md) reaches the run
    assert env["NIGHTLAB_SMOKE_STEPS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == ""
    same, _ = _gpu_style_repo(tmp_path / "same", smoke_timeout_s="60", smoke_device="same")
    assert "CUDA_VISIBLE_DEVICES" not in smoke_env(same)
    h100 = load_program(REPO / "programs" / "h100.md")
    assert h100.spec.env["NIGHTLAB_PRESET"] == "gpu" and h100.spec.smoke_device == "cpu" and h100.spec.smoke_knobs


@needs_bwrap
def test_a_big_model_is_smoke_tested_shrunk_in_seconds_and_a_broken_change_is_still_caught(prepared_cpu, tmp_path):
    program, repo = _gpu_style_repo(tmp_path, smoke_timeout_s="90", smoke_knobs=SMALL)
    res = smoke_run(program, repo, tmp_path / "ok.log", sandboxed=True)
    log = (tmp_path / "ok.log").read_text()
    assert smoke_reason(res, "val_bpb") is None, log[-3000:]
    assert re.search(r"^num_steps:\s+2$", log, flags=re.M), log[-2000:]  # the harness's step cap
    assert re.search(r"dim 64 x 2 layers", log), log[-2000:]  # shrunk: the big model never ran
    # the knobs were set in a scratch copy: the tree the campaign commits is untouched
    assert "DEPTH = 12" in (repo / "trainer" / "train.py").read_text()
    assert not list(repo.rglob("model.pt"))

    # a change that breaks the model's code is caught by the shrunk run
    train = repo / "trainer" / "train.py"
    good = train.read_text()
    train.write_text(good.replace("F.relu(self.c_fc(x)).square()", "F.relu(self.c_fc(x)).square().flatten(1)"))
    bad = smoke_run(program, repo, tmp_path / "bad.log", sandboxed=True)
    assert "smoke run failed: exited 1" in (smoke_reason(bad, "val_bpb") or "")

    # a change that removes a knob the smoke shrinks is rejected, naming it
    train.write_text(good.replace("DEPTH = 12", "N_LAYERS = 12").replace("n_layer=DEPTH", "n_layer=N_LAYERS")
                     .replace("math.ceil(DEPTH *", "math.ceil(N_LAYERS *"))
    with pytest.raises(SmokeKnobError, match="smoke_knobs.DEPTH"):
        smoke_run(program, repo, tmp_path / "gone.log", sandboxed=True)


@needs_bwrap
def test_without_smoke_knobs_the_big_model_times_out_as_h100_did(prepared_cpu, tmp_path):
    """What issue 16 measured: a GPU-size model's smoke run on CPU is killed at its timeout."""
    program, repo = _gpu_style_repo(tmp_path, smoke_timeout_s="20")
    res = smoke_run(program, repo, tmp_path / "big.log", sandboxed=True)
    assert res.timed_out and "hard timeout" in (smoke_reason(res, "val_bpb") or "")


def test_bad_smoke_knobs_exit_2_naming_the_field(tmp_path, capsys):
    from org.campaign import validate_inputs
    from org.cli import main

    program, _ = _gpu_style_repo(tmp_path, smoke_timeout_s="60", smoke_knobs="{N_LAYERS: 2}")
    with pytest.raises(InputError, match="smoke_knobs.N_LAYERS"):
        validate_inputs(program.path, REPO / "roles" / "solo")
    wrong_type, _ = _gpu_style_repo(tmp_path / "t", smoke_timeout_s="60", smoke_knobs="{DEPTH: two}")
    with pytest.raises(InputError, match="smoke_knobs.DEPTH"):
        validate_inputs(wrong_type.path, REPO / "roles" / "solo")
    inline = tmp_path / "inline.md"
    inline.write_text(_program_text(smoke_inline_s="20", smoke_knobs="{DEPTH: 2}"))
    with pytest.raises(SystemExit) as exit_:
        main(["campaign", "--program", str(inline), "--org", str(REPO / "roles" / "solo")])
    assert exit_.value.code == 2
    assert "smoke_knobs" in capsys.readouterr().err
