"""
==============================================================================================
 nightlab FIXED HARNESS: held-out test evaluation. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Runs an (edited) train.py unchanged and, when it makes its final `evaluate_bpb` call, scores the
same model on the held-out test split as well. The test tokens are read here and nowhere else:
nothing train.py imports can reach them (the vet gate also rejects code that names them).

    python -m trainer.heldout --script trainer/train.py --out result.json

train.py's stdout (summary block included) passes through untouched; --out receives
{"val_bpb": ..., "test_bpb": ..., "eval_tokens": ...}. Used to confirm a keep on unseen data.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from pathlib import Path

import torch

from trainer import prepare


def evaluate_test_bpb(model, tokenizer: prepare.Tokenizer, batch_size: int) -> float:
    """The val metric, computed identically on the held-out test split."""
    device = next(model.parameters()).device
    batch_size = max(1, min(batch_size, prepare.EVAL_TOKENS // prepare.MAX_SEQ_LEN))
    held = prepare._heldout_dir()
    prepare.check_cache(held)
    loader = prepare._packed_batches(*prepare._load_split(held, "test"), tokenizer.get_bos_token_id(),
                                     batch_size, prepare.MAX_SEQ_LEN, shuffle=False, buffer_size=1000,
                                     device=device, seed=0)
    return prepare._score(model, loader, prepare.get_token_bytes(device))


def run(script: Path, out: Path) -> int:
    results: dict = {}
    val_metric = prepare.evaluate_bpb

    def evaluate_both(model, tokenizer, batch_size):
        val = val_metric(model, tokenizer, batch_size)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            results.update(val_bpb=val, test_bpb=evaluate_test_bpb(model, tokenizer, batch_size),
                           eval_tokens=prepare.EVAL_TOKENS, preset=prepare.PRESET)
        model.train(was_training)
        return val

    prepare.evaluate_bpb = evaluate_both  # train.py imports the name from this module at run time
    code = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code == 0 and not results:
        print("FAIL: heldout: train.py never called evaluate_bpb", file=sys.stderr)
        code = 1
    if results:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, out)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.heldout", description=__doc__.split("\n\n")[1])
    ap.add_argument("--script", type=Path, default=Path("trainer/train.py"), help="the train.py to run")
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = ap.parse_args(argv)
    if not args.script.is_file():
        print(f"FAIL: {args.script}: no such script", file=sys.stderr)
        return 2
    return run(args.script, args.out)


if __name__ == "__main__":
    sys.exit(main())
