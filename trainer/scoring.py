"""
==============================================================================================
 nightlab FIXED HARNESS: the metric and the checks around it. AGENTS NEVER EDIT THIS FILE.
==============================================================================================

Bits per byte = summed next-token cross-entropy (nats) / (ln 2 * UTF-8 bytes of the targets),
special tokens excluded. The model is given tokens only: `model(x)` returns logits and the
harness computes the cross-entropy, so targets never reach model code. Before a score counts:

- the logits are a plain tensor of the right shape (a Tensor subclass could rewrite the loss);
- causality: changing every token from position t on leaves the logits before t unchanged, for
  PROBES positions t drawn at random for each evaluation (a fixed t would let attention that
  reads ahead within aligned chunks through);
- statelessness: the first batch scored again at the end gives the same logits, and no parameter
  changed while scoring;
- the functions the harness scores with are the ones it imported (not patched since: the torch
  namespaces it uses and its own modules' globals, compared value by value), and no torch
  function or dispatch mode is active.

A failed check raises ScoringError naming it. In a process that ran train.py's code first these
checks are hints; trainer/heldout.py re-scores a keep's saved models in a fresh process where the
harness was imported before any of it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from trainer.corpus import DataError

PROBES = 3  # causality probes, at positions drawn afresh for every evaluation

# What the harness scores with, as imported: a later reassignment is caught before a score counts.
# Whole namespaces where nothing legitimate reassigns anything (the harness's own modules are added
# by `pin`), single attributes of the classes torch itself may extend.
_PINNED = [(torch, "allclose"), (torch, "equal"), (torch.Tensor, "float"), (torch.Tensor, "reshape"),
           (torch.Tensor, "sum"), (torch.Tensor, "__mul__"), (torch.Tensor, "__getitem__"),
           (torch.Tensor, "numel"), (torch.Tensor, "clone"), (torch.nn.Module, "__call__")]  # fmt: skip
_ORIGINALS = [getattr(owner, name) for owner, name in _PINNED]
_NAMESPACES: list[tuple[str, object, dict[str, object]]] = []
_random = random.SystemRandom()  # probe positions the model cannot predict from a seed


def pin(module: object) -> None:
    """Record every global of `module` as it is now; `score` refuses to count if any was replaced."""
    _NAMESPACES.append((getattr(module, "__name__", str(module)), module, dict(vars(module))))


pin(F)
pin(torch._C._nn)


class ScoringError(DataError):
    """The model failed one of the harness's checks: the score would not mean what it says."""

    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__("model", f"{check} check: {message}")


@torch.no_grad()
def bits_per_byte(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """Sum of per-token cross-entropy (nats) over non-special targets and their UTF-8 byte count."""
    nbytes = token_bytes[targets.reshape(-1)]
    mask = nbytes > 0
    return float((losses.reshape(-1).float() * mask).sum()), int(nbytes.sum())


def _unpatched() -> None:
    for (owner, name), original in zip(_PINNED, _ORIGINALS, strict=True):
        if getattr(owner, name) is not original:
            raise ScoringError("harness", f"{getattr(owner, '__name__', owner)}.{name} was replaced after the "
                               "harness imported it")  # fmt: skip
    for label, module, snapshot in _NAMESPACES:
        now = vars(module)
        for name, value in snapshot.items():
            if now.get(name) is not value:
                raise ScoringError("harness", f"{label}.{name} was replaced after the harness imported it")
    # a TorchFunctionMode / TorchDispatchMode left active would see (and could rewrite) every op
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack():
        raise ScoringError("harness", "a torch function or dispatch mode is active while scoring")


def _logits(model, x: torch.Tensor, vocab: int) -> torch.Tensor:
    logits = model(x)
    if type(logits) is not torch.Tensor or logits.shape != (*x.shape, vocab) or not logits.is_floating_point():
        raise ScoringError("output", f"model(x) must return a plain tensor of logits of shape {(*x.shape, vocab)}, "
                           f"got {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")  # fmt: skip
    return logits


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float noise, far below what a leak or an update moves: 1e-4 in fp32, 1e-2 for
    logits computed in bf16/fp16 (autocast on GPU; the same kernels usually agree to the bit)."""
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 1e-2
    a, b = a.float(), b.float()
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * (1.0 + float(a.abs().max()))))


def _fingerprint(model) -> torch.Tensor:
    """Sum, sum of squares and a position-weighted sum of every parameter: an update moves one."""
    parts = [torch.zeros(3, dtype=torch.double)]
    for p in model.parameters():
        v = p.detach().double().flatten()
        ramp = torch.linspace(1.0, 2.0, v.numel(), dtype=torch.double, device=v.device)
        parts.append(torch.stack([v.sum(), (v * v).sum(), (v * ramp).sum()]).cpu())
    return torch.stack(parts)


@torch.no_grad()
def score(model, batches: Iterator[tuple[torch.Tensor, torch.Tensor, int]], rows: int, token_bytes: torch.Tensor) -> float:
    """Bits per byte over exactly `rows` rows of `batches` whatever their batch size (the last batch
    is cut), so an eval batch size changes speed only, never which tokens are scored."""
    _unpatched()
    vocab = token_bytes.numel()  # the cache's tokenizer
    params = _fingerprint(model)
    total_nats, total_bytes, rows_left, first = 0.0, 0, max(1, rows), None
    while rows_left > 0:
        x, y, _ = next(batches)
        x, y = x[:rows_left].clone(), y[:rows_left].clone()  # x shares no storage with the targets
        logits = _logits(model, x, vocab)
        if first is None:
            first = (x, logits)
            for k in sorted(_random.sample(range(1, x.size(1)), min(PROBES, x.size(1) - 1))):
                later = x.clone()
                later[:, k:] = (later[:, k:] + 1 + _random.randrange(vocab - 1)) % vocab  # every token from k on
                if not _close(_logits(model, later, vocab)[:, :k], logits[:, :k]):
                    raise ScoringError("causality", f"the logits before position {k} changed when only tokens "
                                       "from it on changed: the model reads the future (or is not deterministic)")  # fmt: skip
        with torch._C.DisableTorchFunctionSubclass():
            losses = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1), reduction="none")
        nats, nbytes = bits_per_byte(losses, y, token_bytes)
        _unpatched()  # after every batch: a patch the model makes and undoes within the loop
        total_nats += nats
        total_bytes += nbytes
        rows_left -= len(y)
    if not _close(_logits(model, first[0], vocab), first[1]):
        raise ScoringError("statelessness", "the first batch scored again at the end gave other logits (state "
                           "kept between calls, or a model that is not deterministic)")
    if not torch.equal(_fingerprint(model), params):
        raise ScoringError("statelessness", "the model's parameters changed while it was being scored")
    _unpatched()
    return total_nats / (math.log(2) * total_bytes)
