"""
==============================================================================================
 nightlab FIXED HARNESS: a model server. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Loads one saved model with the train.py that trained it and answers the scorer's requests for
logits over the socket the harness handed it ($NIGHTLAB_MODEL_FD; trainer/remote.py). Under
nightlab it runs in a sandbox that reads no data: it sees only the tokens the scorer sends, and
its output goes to a log, not to the scorer's summary.

    NIGHTLAB_MODEL_FD=3 python -m trainer.serve --script trainer/train.py runs/0003.pt
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch

from trainer import remote
from trainer.heldout import load_model, load_script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.serve", description=__doc__.split("\n\n")[1])
    ap.add_argument("checkpoint", nargs="?", type=Path, help="the saved model (default: $NIGHTLAB_CHECKPOINT)")
    ap.add_argument("--script", type=Path, default=Path("trainer/train.py"), help="the train.py that trained it")
    args = ap.parse_args(argv)
    path = args.checkpoint or Path(os.environ.get("NIGHTLAB_CHECKPOINT", ""))
    fd = os.environ.get("NIGHTLAB_MODEL_FD")
    if not fd or not path.is_file():
        print("FAIL: serve: needs $NIGHTLAB_MODEL_FD and a saved model", flush=True)
        return 2
    sock = socket.socket(fileno=int(fd))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")  # as train.py evaluates
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    model = load_model(load_script(args.script), path, device)
    remote.serve(sock, model, device, autocast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
