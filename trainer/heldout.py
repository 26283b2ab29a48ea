"""
==============================================================================================
 nightlab FIXED HARNESS: held-out test evaluation. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Scores the models runs saved. When the harness sets $NIGHTLAB_CHECKPOINT, `evaluate_bpb`
(prepare.py) saves the trained model there; this loads each saved model with the code of the
train.py that trained it, in a fresh process, and scores it with the harness's own scorer: the
model is given tokens, the harness computes the cross-entropy from its logits.

    python -m trainer.heldout --split val runs/0003.pt   # a run's metric (the program's evaluate command)
    python -m trainer.heldout runs/0003.pt runs/0003.r1.pt      # a keep's test; or $NIGHTLAB_CHECKPOINTS

With `--split val` (what a campaign runs after every training run, in a sandbox that alone reads
val) it prints val_bpb and eval_tokens. Otherwise, for a keep, it prints a `---` block:
test_bpb (the mean over the models), test_bpb_sd, test_models, val_bpb and
val_bpb_1, val_bpb_2, ... (the models re-scored on val here, in the order given: the campaign
holds each against what the run that saved it printed), and
eval_tokens; or `rejected: <why>` when a model fails one of the scoring checks (causality,
statelessness, output, an unpatched harness: trainer/scoring.py). Here the harness is imported
before any of train.py's code runs. A campaign runs it on every keep (the program's `test:` command); the test score
sits beside the verdict and never makes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import sys
from pathlib import Path
from types import ModuleType

import torch

from trainer import prepare, remote, scoring
from trainer.scoring import ScoringError


def load_script(script: Path) -> ModuleType:
    """The train.py that trained the models, as a module: its classes, not its main()."""
    spec = importlib.util.spec_from_file_location("nightlab_trained", script)
    if spec is None or spec.loader is None:
        raise prepare.DataError(script, "not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickle look their module up by name
    spec.loader.exec_module(module)
    return module


def load_model(module: ModuleType, checkpoint: Path, device: torch.device) -> torch.nn.Module:
    """A whole saved model. A run launched as a script pickles its classes as `__main__.X`: they
    are looked up in `module` while it loads."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        model = torch.load(checkpoint, map_location=device, weights_only=False)
    finally:
        sys.modules["__main__"] = main
    if not isinstance(model, torch.nn.Module):
        raise prepare.DataError(checkpoint, f"holds a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


REMOTE_BATCH = 32  # rows per request to a model server (the batch changes speed only, never the score)


def model_servers(n: int, strict: bool) -> list[remote.RemoteModel] | None:
    """The model servers the harness connected this scorer to ($NIGHTLAB_MODEL_FDS: one socket fd
    per saved model, in order, `;`-separated), or None: score in-process."""
    raw = os.environ.get("NIGHTLAB_MODEL_FDS")
    if not raw:
        return None
    fds = raw.split(";")
    if len(fds) != n or not all(f.isdigit() for f in fds):
        raise prepare.DataError("$NIGHTLAB_MODEL_FDS", f"{raw!r} does not name a server for each of {n} models")
    vocab = prepare.get_token_bytes("cpu").numel()  # the cache tokenizer's: what score() checks against
    return [remote.RemoteModel(socket.socket(fileno=int(f)), f"model {i + 1}", vocab, strict) for i, f in enumerate(fds)]


def verifier_for(i: int):
    """A callable that asks the harness ($NIGHTLAB_CONTROL_FD) for a fresh copy of model i, started
    only after model i's own server is killed, and returns it; None without a control socket."""
    raw = os.environ.get("NIGHTLAB_CONTROL_FD")
    if not raw or not raw.isdigit():
        return None
    if raw not in _CONTROL:  # one socket object per fd: a second one would close it when collected
        _CONTROL[raw] = socket.socket(fileno=int(raw))
    ctrl = _CONTROL[raw]
    vocab = prepare.get_token_bytes("cpu").numel()

    def fresh() -> remote.RemoteModel:
        ctrl.sendall(f"verify {i}\n".encode())
        _, fds, _, _ = socket.recv_fds(ctrl, 16, 1)
        if not fds:
            raise ScoringError("output", f"the harness started no verifier for model {i + 1}")
        return remote.RemoteModel(socket.socket(fileno=fds[0]), f"model {i + 1}'s verifier", vocab, strict=True)

    return fresh


_CONTROL: dict[str, socket.socket] = {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.heldout", description=__doc__.split("\n\n")[1])
    ap.add_argument("checkpoints", nargs="*", type=Path, help="saved models (default: $NIGHTLAB_CHECKPOINTS)")
    ap.add_argument("--script", type=Path, default=Path("trainer/train.py"), help="the train.py that trained them")
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="test (default): the held-out test of a keep, with val re-scored; val: the run's metric")
    args = ap.parse_args(argv)
    paths = args.checkpoints or [Path(p) for p in os.environ.get("NIGHTLAB_CHECKPOINTS", "").split(os.pathsep) if p]
    if not paths:
        print("FAIL: heldout: no saved models (pass paths or set NIGHTLAB_CHECKPOINTS)", flush=True)
        return 2
    missing = [str(p) for p in [args.script, *paths] if not p.is_file()]
    if missing:
        print(f"FAIL: heldout: no such file: {', '.join(missing)}", flush=True)
        return 2
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # as train.py evaluates
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    try:
        servers = model_servers(len(paths), strict=args.split == "test")
        module = None if servers else load_script(args.script)  # with servers, no train.py code runs here
        batch = REMOTE_BATCH if servers else getattr(module, "EVAL_BATCH_SIZE", REMOTE_BATCH)
        batch = batch if type(batch) is int and batch > 0 else REMOTE_BATCH
        scores, vals = [], []
        for i, path in enumerate(paths):
            model = servers[i] if servers else load_model(module, path, device)
            fresh = verifier_for(i) if servers else None
            with autocast:
                if fresh is None:  # the checks ask the model that was scored
                    if args.split == "test":
                        scores.append(prepare.score_split(model, "test", batch))
                    vals.append(prepare.score_split(model, "val", batch))
                else:  # every split scored first; then the model's server goes, and a fresh copy checks
                    pending = []
                    for split in (["test"] if args.split == "test" else []) + ["val"]:
                        bpb, checks = prepare.score_split(model, split, batch, defer=True)
                        (scores if split == "test" else vals).append(bpb)
                        pending.append(checks)
                    model.close()
                    verifier = fresh()
                    for checks in pending:
                        checks.run(verifier, fresh=True)
                    verifier.close()
            print(f"{path}: " + (f"test_bpb {scores[-1]:.6f} " if scores else "") + f"val_bpb {vals[-1]:.6f}", flush=True)
            if isinstance(model, remote.RemoteModel):
                model.close()
            del model
    except ScoringError as e:  # the model failed a check: the campaign rejects the keep
        print(f"heldout: {path}: {e}", flush=True)
        print("---")
        print(f"rejected:         {e.check} check failed on {path.name}: {e}")
        return 0
    except prepare.DataError as e:
        print(f"FAIL: heldout: {e}", flush=True)
        return 1
    print("---")
    if scores:
        print(f"test_bpb:         {statistics.fmean(scores):.6f}")
        print(f"test_bpb_sd:      {statistics.stdev(scores) if len(scores) > 1 else 0.0:.6f}")
        print(f"test_models:      {len(scores)}")
    print(f"val_bpb:          {statistics.fmean(vals):.6f}")
    for i, v in enumerate(vals, 1):  # each model's own, to hold against the run that saved it
        print(f"val_bpb_{i}:        {v:.6f}")
    print(f"eval_tokens:      {prepare.EVAL_TOKENS}")
    return 0


scoring.pin(sys.modules[__name__])  # train.py's code runs in this process: none of this may change

if __name__ == "__main__":
    sys.exit(main())
