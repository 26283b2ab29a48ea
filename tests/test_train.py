"""trainer/train.py as the harness runs it: a real subprocess on the prepared stdlib corpus."""

from __future__ import annotations

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
    assert "ROPE_BASE = 10000.0 " in source
    broken.write_text(source.replace("ROPE_BASE = 10000.0 ", 'ROPE_BASE = float("nan") '))  # NaN rotary angles
    out = run_train(broken, prepared_cpu, timeout=180)
    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("FAIL: loss is nan")
    assert "---" not in out.stdout.splitlines()


def test_bad_knob_combination_fails_fast(prepared_cpu, tmp_path):
    broken = tmp_path / "train.py"
    source = (REPO / "trainer" / "train.py").read_text()
    broken.write_text(source.replace("TOTAL_BATCH_TOKENS = 2**12", "TOTAL_BATCH_TOKENS = 1000"))
    out = run_train(broken, prepared_cpu, timeout=120)
    assert out.returncode == 1 and "FAIL: TOTAL_BATCH_TOKENS=1000" in out.stdout


@pytest.mark.slow
def test_a_step_smaller_than_the_device_batch_trains_and_the_device_batch_changes_no_result(prepared_cpu, tmp_path):
    """DEVICE_BATCH_SIZE caps the rows of a micro-batch; a step of fewer rows runs with fewer (the
    quickstart's TOTAL_BATCH_TOKENS x0.5 was refused before). How a step is cut into micro-batches
    changes no token it sees: under the FLOP budget the result agrees to summation order (measured
    2e-5 bpb apart, against seed noise of ~4e-3), so the quickstart fixes the knob."""
    source = (REPO / "trainer" / "train.py").read_text()
    runs = {}
    for name, old, new, smoke in [("base", "", "", False),
                                  ("half-rows", "DEVICE_BATCH_SIZE = 16", "DEVICE_BATCH_SIZE = 8", False),
                                  ("small-step", "TOTAL_BATCH_TOKENS = 2**12", "TOTAL_BATCH_TOKENS = 2**10", True)]:  # fmt: skip
        assert old in source
        script = tmp_path / f"{name}.py"
        script.write_text(source.replace(old, new))
        out = run_train(script, prepared_cpu, timeout=300, smoke=smoke)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        runs[name] = parse_summary(out.stdout)
    assert math.isfinite(runs["small-step"]["val_bpb"])
    assert runs["half-rows"]["num_steps"] == runs["base"]["num_steps"]
    assert runs["half-rows"]["val_bpb"] == pytest.approx(runs["base"]["val_bpb"], abs=1e-3)


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
def test_full_cpu_preset_run_learns_and_a_busy_machine_cannot_move_it(prepared_cpu, tmp_path):
    """The real quickstart run, twice with one seed: the second with two busy-looping processes
    stealing the cores. The cpu preset's budget is FLOPs, so the result is the same to the bit
    (with a wall-clock budget the same seed gave 2.3138 and 2.2641), and it clearly learns."""
    first = run_train(REPO / "trainer" / "train.py", prepared_cpu, timeout=600, smoke=False)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        second = run_train(REPO / "trainer" / "train.py", prepared_cpu, timeout=900, smoke=False)
    finally:
        for h in hogs:
            h.kill()
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    a, b = parse_summary(first.stdout), parse_summary(second.stdout)
    assert a["num_steps"] == b["num_steps"] and a["val_bpb"] == b["val_bpb"], (a, b)
    assert b["training_seconds"] > a["training_seconds"]  # the hogs did slow it down
    # A model that learned nothing predicts uniformly: log2(V) bits per non-special target token.
    import numpy as np

    token_bytes = np.load(prepared_cpu / "data" / "cpu" / "token_bytes.npy")
    val = np.fromfile(prepared_cpu / "val" / "cpu" / "val.bin", dtype=np.uint16)
    nbytes = token_bytes[val]
    uniform = (nbytes > 0).sum() * math.log2(len(token_bytes)) / nbytes.sum()
    assert a["val_bpb"] < 0.9 * uniform, (a, uniform)


def test_flop_budget_gives_a_bigger_model_fewer_tokens():
    """FLOPs per token are counted by the harness (FlopCounterMode) on the model being trained."""
    from trainer import prepare, train

    def budget_for(width: int) -> prepare.Budget:
        cfg = train.GPTConfig(sequence_len=64, vocab_size=256, n_layer=2, n_head=width // 32, n_embd=width,
                              mlp_ratio=4, value_embeds=True, softcap=15.0, rope_base=1e4)  # fmt: skip
        model = train.GPT(cfg)
        model.init_weights()
        x = torch.randint(0, 256, (2, 64))
        return prepare.Budget.for_model(model, x, torch.roll(x, -1, 1))

    small, big = budget_for(64), budget_for(128)
    assert prepare.FLOP_BUDGET is not None  # the cpu preset
    assert 2.5 < big.flops_per_token / small.flops_per_token < 4.5  # matmul FLOPs ~ width^2
    steps = []
    for b in (small, big):
        n = 0
        while not b.done:
            b.step(4096, seconds=0.01)
            n += 1
        steps.append(n)
        assert b.progress == 1.0 and b.flops >= prepare.FLOP_BUDGET
    assert steps[0] > 2.5 * steps[1]
    assert "FLOPs" in small.describe() and small.left() == "0% left"


MATMUL_FORMS = {  # the same (64 x 32) @ (32 x 48) product, written the ways a proposal could hide it
    "mm": lambda a, b: a @ b,
    "addmm_ in place": lambda a, b: torch.zeros(64, 48).addmm_(a, b),
    "mm into out=": lambda a, b: torch.mm(a, b, out=torch.empty(64, 48)),
    "addmm_ through getattr": lambda a, b: getattr(torch.zeros(64, 48), "add" + "mm_")(a, b),
    "baddbmm_ on a batch of one": lambda a, b: torch.zeros(1, 64, 48).baddbmm_(a[None], b[None])[0],
    "addbmm over two halves": lambda a, b: torch.addbmm(torch.zeros(64, 48), torch.stack(a.chunk(2, 1)),
                                                        torch.stack(b.chunk(2, 0))),  # fmt: skip
    "addmv per column": lambda a, b: torch.stack([torch.addmv(torch.zeros(64), a, b[:, j]) for j in range(48)], 1),
    "mv per column": lambda a, b: torch.stack([torch.mv(a, b[:, j]) for j in range(48)], 1),
    "dot per entry": lambda a, b: torch.stack([torch.stack([torch.dot(a[i], b[:, j]) for j in range(48)])
                                               for i in range(64)]),  # fmt: skip
    "einsum": lambda a, b: torch.einsum("ik,kj->ij", a, b),
    "_addmm_activation": lambda a, b: torch._addmm_activation(torch.zeros(48), a, b),
    "int8 weight-packed mm": lambda a, b: torch.ops.aten._weight_int8pack_mm(a, b.t().contiguous().round().clamp(
        -127, 127).to(torch.int8), torch.ones(48)),  # fmt: skip
}


@pytest.mark.parametrize("form", sorted(MATMUL_FORMS))
def test_a_matmul_counts_the_same_however_it_is_written(form):
    """A FLOP budget counts what the model computes: the in-place, fused or vector forms of a
    matmul cost the same as the mm (a proposal could otherwise buy free compute by rewriting its
    layers with addmm_ or mv, on purpose or by accident)."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer import prepare

    prepare._register_flop_formulas()
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    with FlopCounterMode(display=False) as counter:
        out = MATMUL_FORMS[form](a, b)
    if form == "int8 weight-packed mm":
        b = b.round().clamp(-127, 127)
    expect = (a @ b).relu() if form == "_addmm_activation" else a @ b
    assert torch.allclose(out.relu() if form == "_addmm_activation" else out, expect, atol=1e-3)
    assert counter.get_total_flops() >= 2 * 64 * 32 * 48, form


def test_the_fused_cpu_head_is_the_reference_maths_with_the_same_counted_flops():
    """GPT.forward's CPU training loss (SoftcapCrossEntropy, chunked) against its logits path: the
    same loss and gradients, and the same FLOPs for the harness to count, at a chunk size that
    does not divide the rows and a softcap that bites."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer import train

    torch.manual_seed(0)
    cfg = train.GPTConfig(sequence_len=40, vocab_size=300, n_layer=2, n_head=2, n_embd=64, mlp_ratio=4,
                          value_embeds=True, softcap=3.0, rope_base=1e4)  # fmt: skip
    model = train.GPT(cfg)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():  # off the zero-init so every gradient is non-trivial
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.randint(0, 300, (3, 40)), torch.randint(0, 300, (3, 40))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False) as counter:
            loss = model(x, y)
            loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], counter.get_total_flops()

    chunk = train.HEAD_CHUNK
    try:
        train.HEAD_CHUNK = 7  # 120 rows: 17 chunks and a remainder
        assert train.fused_head_agrees(model, x, y, torch.autocast("cpu", enabled=False))
        model.fused_head = True
        fused = loss_and_grads()
    finally:
        train.HEAD_CHUNK = chunk
    model.fused_head = False
    ref = loss_and_grads()
    assert fused[0] == pytest.approx(ref[0], rel=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), fused[1], ref[1], strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name
    assert fused[2] == ref[2]  # a budget counted on the fused head buys the same tokens


HEAD_EDITS = {  # an edit near the loss -> does the fused head still train what forward() says?
    "legit_z_loss": False,  # the red-team suite's legitimate loss edits
    "legit_label_smoothing": False,
    "legit_softcap_30": True,  # the knob: both paths read it
    "head bias": ([("self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)",
                    "self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=True)")], False),
    "softcap hard-coded": ([("logits = self.cfg.softcap * torch.tanh(logits / self.cfg.softcap)",
                             "logits = 5.0 * torch.tanh(logits / 5.0)")], False),
    "gradient halved through a detach": ([("logits = self.lm_head(norm(x)).float()",
                                           "h = norm(x)\n        logits = self.lm_head(0.5 * h + 0.5 * h.detach()).float()")],
                                         False),
    "dropout before the head": ([("            x = block(x, ve, cos, sin)",
                                  "            x = F.dropout(block(x, ve, cos, sin), 0.1, self.training)")], True),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HEAD_EDITS))
def test_a_loss_edited_in_forward_is_the_loss_trained_on(case, tmp_path):
    """The fused head must never hide an edit: a change to what forward()'s loss trains (its value
    or its gradients) that SoftcapCrossEntropy does not make turns the fused head off
    (fused_head_agrees, asked at init as main() asks it), so the edited loss is trained on. A change
    both paths see keeps it on."""
    import importlib.util

    import yaml

    spec = HEAD_EDITS[case]
    if isinstance(spec, bool):
        edits = [(e["search"], e["replace"]) for e in
                 yaml.safe_load((REPO / "evals" / "redteam" / "cases" / f"{case}.yaml").read_text())["edits"]]  # fmt: skip
        expected = spec
    else:
        edits, expected = spec
    source = (REPO / "trainer" / "train.py").read_text()
    for search, replace in edits:
        assert source.count(search) == 1, search
        source = source.replace(search, replace)
    script = tmp_path / "train_edited.py"
    script.write_text(source)
    module_spec = importlib.util.spec_from_file_location("train_edited", script)
    mod = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(mod)
    torch.manual_seed(0)
    cfg = mod.GPTConfig(sequence_len=32, vocab_size=200, n_layer=1, n_head=1, n_embd=32, mlp_ratio=4,
                        value_embeds=False, softcap=mod.LOGIT_SOFTCAP, rope_base=1e4)  # fmt: skip
    model = mod.GPT(cfg)
    model.init_weights()  # as main() checks it: at init, where the logits are ~1e-2
    x, y = torch.randint(0, 200, (2, 32)), torch.randint(0, 200, (2, 32))
    assert mod.fused_head_agrees(model, x, y, torch.autocast("cpu", enabled=False)) is expected
    if case == "legit_softcap_30":  # ignored targets are F.cross_entropy's: the fused head steps aside
        assert not mod.fused_head_agrees(model, x, torch.where(y > 100, -100, y), torch.autocast("cpu", enabled=False))


def test_targets_never_reach_model_code(prepared_cpu, monkeypatch):
    """The harness scores logits from `model(x)`: a forward that returns a zero loss whenever it is
    handed targets scores like the uniform predictor it is, not zero."""
    monkeypatch.setenv("NIGHTLAB_CACHE", str(prepared_cpu))
    from trainer import prepare

    tokenizer = prepare.Tokenizer.from_directory()
    vocab = tokenizer.get_vocab_size()

    class Cheat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, targets=None, reduction="mean"):
            if targets is not None:
                return torch.zeros(targets.shape) if reduction == "none" else torch.zeros(())
            return torch.zeros(*x.shape, vocab) + self.w

    bpb = prepare.evaluate_bpb(Cheat(), tokenizer, 32)
    tb = prepare.get_token_bytes("cpu")
    loader = prepare.make_dataloader(tokenizer, prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN, prepare.MAX_SEQ_LEN, "val")
    _, y, _ = next(loader)
    nbytes = tb[y.reshape(-1)]
    uniform = float((nbytes > 0).sum()) * math.log2(vocab) / float(nbytes.sum())
    assert bpb == pytest.approx(uniform, rel=1e-5)

    class NotLogits(Cheat):
        def forward(self, x, targets=None, reduction="mean"):
            return torch.zeros(x.shape)  # a per-token "loss", not logits

    with pytest.raises(prepare.DataError, match="model: output check: model\\(x\\) must return a plain tensor of logits"):
        prepare.evaluate_bpb(NotLogits(), tokenizer, 32)


def test_a_run_saves_its_model_and_the_harness_scores_it_on_test(prepared_cpu, tmp_path):
    """$NIGHTLAB_CHECKPOINT: the model scored on val is saved; trainer.heldout loads it with the
    train.py that made it (a copy, run as a script) and scores the test split in a fresh process."""
    script = tmp_path / "train.py"
    script.write_text((REPO / "trainer" / "train.py").read_text())
    ckpt = tmp_path / "runs" / "0001.pt"
    env = {**os.environ, "NIGHTLAB_CACHE": str(prepared_cpu), "PYTHONPATH": str(REPO), "NIGHTLAB_PRESET": "cpu",
           "NIGHTLAB_SMOKE": "1", "NIGHTLAB_SMOKE_SECONDS": "2", "NIGHTLAB_CHECKPOINT": str(ckpt)}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    val = parse_summary(out.stdout)["val_bpb"]
    assert ckpt.is_file() and not ckpt.with_name("0001.pt.tmp").exists()
    env.pop("NIGHTLAB_CHECKPOINT")
    env["NIGHTLAB_CHECKPOINTS"] = os.pathsep.join([str(ckpt), str(ckpt)])
    held = subprocess.run([sys.executable, "-m", "trainer.heldout", "--script", str(script)], env=env,
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert held.returncode == 0, held.stdout[-2000:] + held.stderr[-2000:]
    block = dict(line.split(":", 1) for line in held.stdout.split("\n---\n")[-1].splitlines())
    test = float(block["test_bpb"])
    assert math.isfinite(test) and test != val and abs(test - val) < 1.0  # same distribution, same model
    assert int(block["test_models"]) == 2 and float(block["test_bpb_sd"]) == 0.0  # one model twice: deterministic


def test_heldout_refuses_missing_models(prepared_cpu, tmp_path):
    env = {**os.environ, "NIGHTLAB_CACHE": str(prepared_cpu), "PYTHONPATH": str(REPO)}
    env.pop("NIGHTLAB_CHECKPOINTS", None)
    none = subprocess.run([sys.executable, "-m", "trainer.heldout"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert none.returncode == 2 and "no saved models" in none.stdout
    gone = subprocess.run([sys.executable, "-m", "trainer.heldout", str(tmp_path / "nope.pt")], env=env,
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert gone.returncode == 2 and f"no such file: {tmp_path / 'nope.pt'}" in gone.stdout
    junk = tmp_path / "junk.pt"
    torch.save({"not": "a model"}, junk)
    bad = subprocess.run([sys.executable, "-m", "trainer.heldout", str(junk)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 1 and f"FAIL: heldout: {junk}: holds a dict" in bad.stdout
