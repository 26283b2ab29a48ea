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


def model_servers(n: int) -> list[tuple[remote.RemoteModel, remote.RemoteModel | None]] | None:
    """The model servers the harness connected this scorer to ($NIGHTLAB_MODEL_FDS: per saved
    model, in order, `main[,verifier]` socket fds, `;`-separated), or None: score in-process."""
    raw = os.environ.get("NIGHTLAB_MODEL_FDS")
    if not raw:
        return None
    groups = [g.split(",") for g in raw.split(";")]
    if len(groups) != n or not all(1 <= len(g) <= 2 and all(f.isdigit() for f in g) for g in groups):
        raise prepare.DataError("$NIGHTLAB_MODEL_FDS", f"{raw!r} does not name a server (and a verifier) for each of {n} models")
    return [(remote.RemoteModel(socket.socket(fileno=int(g[0])), f"model {i + 1}"),
             remote.RemoteModel(socket.socket(fileno=int(g[1])), f"model {i + 1} (verifier)", verifier=True)
             if len(g) == 2 else None) for i, g in enumerate(groups)]  # fmt: skip


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
        servers = model_servers(len(paths))
        module = None if servers else load_script(args.script)  # with servers, no train.py code runs here
        batch = REMOTE_BATCH if servers else getattr(module, "EVAL_BATCH_SIZE", REMOTE_BATCH)
        batch = batch if type(batch) is int and batch > 0 else REMOTE_BATCH
        scores, vals = [], []
        for i, path in enumerate(paths):
            model, verifier = servers[i] if servers else (load_model(module, path, device), None)
            with autocast:
                if args.split == "test":
                    scores.append(prepare.score_split(model, "test", batch, verifier))
                vals.append(prepare.score_split(model, "val", batch, verifier))
            print(f"{path}: " + (f"test_bpb {scores[-1]:.6f} " if scores else "") + f"val_bpb {vals[-1]:.6f}", flush=True)
            for m in (model, verifier):
                if isinstance(m, remote.RemoteModel):
                    m.close()
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
